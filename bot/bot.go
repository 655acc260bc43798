// Package bot is `chat bot`: a real user, on the client library, that posts
// numbered messages to a channel at a steady rate and rides through every
// failure (leader deaths, broker and pubsub restarts) by logging it, backing
// off and carrying on.
package bot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"chat/client"
	"chat/wire"
)

// Defaults of Config.
const (
	DefaultChannel = "general"
	DefaultRate    = 1.0
)

// How often progress is logged, and the bounds of the pause after a failure.
const (
	reportEvery = 5 * time.Second
	pauseMin    = 250 * time.Millisecond
	pauseMax    = 5 * time.Second
)

// Config configures a bot.
type Config struct {
	Client   client.Config
	Name     string  // the bot's user name (required)
	Password string  // its password (required); registered on first use
	Channel  string  // where it posts (default "general"); created when missing
	Rate     float64 // posts per second (default 1)
	Count    int     // acknowledged posts after which Run returns; 0 = until ctx ends
	Logger   *slog.Logger
}

// Validate reports the first field of cfg that can't work.
func (cfg Config) Validate() error {
	if e := wire.ValidName("user", cfg.Name); e != nil {
		return fmt.Errorf("bot: %s", e.Message)
	}
	if len(cfg.Password) < wire.MinPasswordLen {
		return fmt.Errorf("bot: the password must be at least %d characters", wire.MinPasswordLen)
	}
	if cfg.Channel != "" {
		if e := wire.ValidName("channel", cfg.Channel); e != nil {
			return fmt.Errorf("bot: %s", e.Message)
		}
	}
	if cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0) {
		return fmt.Errorf("bot: rate %v: want a number of posts per second above 0", cfg.Rate)
	}
	if cfg.Count < 0 {
		return fmt.Errorf("bot: count %d is negative", cfg.Count)
	}
	return nil
}

// Run runs the bot until ctx ends (it returns nil then) or Count posts were
// acknowledged. It returns an error only for a bad Config: every failure of
// the system is logged at warn level and outlived.
//
// Each post is numbered "<name> #N", N counting attempts: a post whose
// outcome is unknown (no reply after all retries) keeps its number, so no two
// stored messages of one run carry the same text.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Channel == "" {
		cfg.Channel = DefaultChannel
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("bot", cfg.Name, "channel", cfg.Channel)
	ccfg := cfg.Client
	if ccfg.Logger == nil {
		ccfg.Logger = log
	}
	c, err := client.Dial(ctx, ccfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("bot: %w", err)
	}
	defer c.Close()
	b := &bot{cfg: cfg, c: c, log: log}
	return b.run(ctx)
}

type bot struct {
	cfg Config
	c   *client.Client
	log *slog.Logger

	n        int // number of the last post attempted
	posted   int // acknowledged posts
	failed   int // posts that failed
	received int // messages received from the channel
	ready    bool
}

func (b *bot) run(ctx context.Context) error {
	// Read the events (counting them): a client nobody reads from falls behind.
	events := b.c.Events()
	interval := time.Duration(float64(time.Second) / b.cfg.Rate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	report := time.NewTicker(reportEvery)
	defer report.Stop()
	pause := pauseMin
	b.log.Info("bot starting", "rate", b.cfg.Rate, "count", b.cfg.Count, "broker", b.c.Config().Broker)
	for {
		if b.cfg.Count > 0 && b.posted >= b.cfg.Count {
			b.log.Info("bot done", "posted", b.posted, "failed", b.failed)
			return nil
		}
		var err error
		if !b.ready {
			err = b.setup(ctx)
		} else {
			err = b.post(ctx)
		}
		if ctx.Err() != nil {
			b.log.Info("bot stopping", "posted", b.posted, "failed", b.failed, "received", b.received)
			return nil
		}
		if b.cfg.Count > 0 && b.posted >= b.cfg.Count {
			continue
		}
		wait := tick.C
		var pauseTimer *time.Timer
		if err != nil {
			b.log.Warn("bot step failed; backing off", "err", err, "code", wire.ErrorCode(err), "pause", pause)
			pauseTimer = time.NewTimer(pause)
			pause = min(2*pause, pauseMax)
		} else {
			pause = pauseMin
		}
		for waiting := true; waiting; {
			var pauseC <-chan time.Time
			if pauseTimer != nil {
				pauseC, wait = pauseTimer.C, nil
			}
			select {
			case <-ctx.Done():
				if pauseTimer != nil {
					pauseTimer.Stop()
				}
				b.log.Info("bot stopping", "posted", b.posted, "failed", b.failed, "received", b.received)
				return nil
			case ev, ok := <-events:
				if !ok {
					events = nil
				} else if ev.Channel == b.cfg.Channel {
					b.received++
				}
			case <-report.C:
				b.log.Info("bot progress", "posted", b.posted, "failed", b.failed, "received", b.received,
					"last", b.n, "epoch", b.c.Epoch())
			case <-pauseC:
				waiting = false
			case <-wait:
				waiting = false
			}
		}
	}
}

// setup registers (an existing account is fine), logs in, creates the channel
// if missing (an existing one is fine) and joins it.
func (b *bot) setup(ctx context.Context) error {
	if err := b.c.Register(ctx, b.cfg.Name, b.cfg.Password); err != nil && wire.ErrorCode(err) != wire.CodeExists {
		return fmt.Errorf("register %s: %w", b.cfg.Name, err)
	}
	if _, err := b.c.Login(ctx, b.cfg.Name, b.cfg.Password); err != nil {
		return fmt.Errorf("log in as %s: %w", b.cfg.Name, err)
	}
	if _, err := b.c.Join(ctx, b.cfg.Channel); err != nil {
		if wire.ErrorCode(err) != wire.CodeNotFound {
			return fmt.Errorf("join #%s: %w", b.cfg.Channel, err)
		}
		if _, err := b.c.Create(ctx, b.cfg.Channel, "traffic from bots"); err != nil && wire.ErrorCode(err) != wire.CodeExists {
			return fmt.Errorf("create #%s: %w", b.cfg.Channel, err)
		}
		if _, err := b.c.Join(ctx, b.cfg.Channel); err != nil {
			return fmt.Errorf("join #%s: %w", b.cfg.Channel, err)
		}
	}
	b.ready = true
	b.log.Info("bot ready", "user", b.cfg.Name)
	return nil
}

// post sends the next numbered message. A refusal that means the session or
// membership is gone (token expired, channel left) sends the bot through setup
// again.
func (b *bot) post(ctx context.Context) error {
	b.n++
	text := fmt.Sprintf("%s #%d", b.cfg.Name, b.n)
	_, err := b.c.Post(ctx, b.cfg.Channel, text)
	if err == nil {
		b.posted++
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	b.failed++
	switch wire.ErrorCode(err) {
	case wire.CodeUnauthorized, wire.CodeNotMember, wire.CodeNotFound:
		b.ready = false
	}
	var ue *client.UnreachableError
	if errors.As(err, &ue) {
		return fmt.Errorf("post %q (outcome unknown): %w", text, err)
	}
	return fmt.Errorf("post %q: %w", text, err)
}
