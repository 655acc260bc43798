package bot_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"chat/bot"
	"chat/client"
	"chat/client/clienttest"
	"chat/internal/testutil"
)

func run(t *testing.T, ctx context.Context, cfg bot.Config) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- bot.Run(ctx, cfg) }()
	select {
	case err := <-errc:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("bot still running after 20s")
	}
	return nil
}

func TestBotPostsCountMessages(t *testing.T) {
	fake := clienttest.NewServer(t)
	cfg := bot.Config{
		Client: client.Config{Broker: fake.Broker, PubSub: fake.PubSub, Timeout: time.Second},
		Name:   "bot1", Password: "secret", Channel: "Traffic", Rate: 200, Count: 5,
	}
	if err := run(t, context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	msgs := fake.Messages("Traffic")
	if len(msgs) != 5 {
		t.Fatalf("stored %d messages, want 5", len(msgs))
	}
	for i, m := range msgs {
		if want := fmt.Sprintf("bot1 #%d", i+1); m.Text != want || m.From != "bot1" {
			t.Fatalf("message %d: %q from %q, want %q", i+1, m.Text, m.From, want)
		}
	}
	// A second run finds its account and channel in place.
	cfg.Count = 1
	if err := run(t, context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Messages("Traffic")); n != 6 {
		t.Fatalf("stored %d messages, want 6", n)
	}
}

func TestBotRidesThroughFailures(t *testing.T) {
	fake := clienttest.NewServer(t)
	fake.Unavailable(4) // no leader at first: setup fails twice
	var logs testutil.Buffer
	cfg := bot.Config{
		Client: client.Config{Broker: fake.Broker, PubSub: fake.PubSub, Timeout: 200 * time.Millisecond, Retries: 2},
		Name:   "bot2", Password: "secret", Rate: 100, Count: 3,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- bot.Run(ctx, cfg) }()
	for len(fake.Messages("general")) == 0 {
		time.Sleep(5 * time.Millisecond) // polling until the bot posts
	}
	fake.DropReplies(4) // the leader dies: posts apply but their replies are lost
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("bot still running after 20s")
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "unavailable") {
		t.Errorf("no warning about the failures:\n%s", logs.String())
	}
	seen := map[string]bool{}
	for _, m := range fake.Messages("general") {
		if seen[m.Text] {
			t.Fatalf("%q stored twice", m.Text)
		}
		seen[m.Text] = true
	}
	if len(seen) < 3 {
		t.Fatalf("stored %d messages, want at least 3", len(seen))
	}
}

func TestBotStopsWithItsContext(t *testing.T) {
	fake := clienttest.NewServer(t)
	cfg := bot.Config{
		Client: client.Config{Broker: fake.Broker, PubSub: fake.PubSub},
		Name:   "bot3", Password: "secret", Rate: 50,
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- bot.Run(ctx, cfg) }()
	for len(fake.Messages("general")) < 3 {
		time.Sleep(5 * time.Millisecond) // polling until the bot posts
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bot still running 10s after its context ended")
	}
}

func TestBotConfigErrors(t *testing.T) {
	for _, cfg := range []bot.Config{
		{Password: "secret"},
		{Name: "b", Password: "x"},
		{Name: "b", Password: "secret", Rate: -1},
		{Name: "b", Password: "secret", Channel: "no spaces"},
	} {
		if err := bot.Run(context.Background(), cfg); err == nil {
			t.Errorf("Run(%+v) succeeded", cfg)
		}
	}
}
