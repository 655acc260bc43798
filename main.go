// Command chat is a fault-tolerant chat system over ZeroMQ: one binary whose
// subcommands are its roles. Run `chat up` for the whole system on one
// machine, then `chat client` in another terminal.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// A second signal exits at once.
		<-ctx.Done()
		stop()
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		fmt.Fprintln(os.Stderr, "chat: interrupted twice: exiting now")
		os.Exit(130)
	}()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", oneLine(err))
		os.Exit(1)
	}
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "chat",
		Usage: "a chat system that keeps working when its servers die",
		Description: "One binary, every role. For the whole system on this machine run `chat up`,\n" +
			"then `chat client` in another terminal. Every flag can also be set with the\n" +
			"environment variable shown beside it.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"CHAT_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"CHAT_LOG_FORMAT"}, Usage: "text or json"},
		},
		Commands: []*cli.Command{
			brokerCommand(), pubsubCommand(), serverCommand(), clientCommand(), botCommand(),
			statusCommand(), healthCommand(), upCommand(),
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // main prints errors, once
	}
}

// logger builds the process's slog logger from the global flags.
func logger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.String("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", c.String("log-format"))
	}
}

// serve runs a role's Serve until a signal, then closes it within a deadline.
func serve(ctx context.Context, log *slog.Logger, run func(context.Context) error, closeFn func() error) error {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case err := <-done:
		closeFn()
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	case <-ctx.Done():
	}
	log.Info("shutting down")
	select {
	case err := <-done:
		closeFn()
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	case <-time.After(5 * time.Second):
		closeFn()
		return errors.New("shutdown took longer than 5s: stopped anyway")
	}
	log.Info("stopped")
	return nil
}

func envs(names ...string) []string { return names }
