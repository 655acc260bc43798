package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"chat/bot"
	"chat/client"
	"chat/client/console"
	"chat/internal/zmqx"
	"chat/wire"
)

// endpointFlags are the flags of every role that talks to the system as a client.
func endpointFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "broker", Value: client.DefaultBroker, EnvVars: envs("CHAT_BROKER"), Usage: "the broker's client endpoint"},
		&cli.StringFlag{Name: "pubsub", Value: client.DefaultPubSub, EnvVars: envs("CHAT_PUBSUB"), Usage: "the pubsub's subscriber endpoint"},
		&cli.DurationFlag{Name: "timeout", Value: client.DefaultTimeout, EnvVars: envs("CHAT_TIMEOUT"), Usage: "how long one try of a request waits for its reply"},
		&cli.IntFlag{Name: "retries", Value: client.DefaultRetries, EnvVars: envs("CHAT_RETRIES"), Usage: "tries per request before giving up"},
		&cli.DurationFlag{Name: "clock-skew", EnvVars: envs("CHAT_CLOCK_SKEW"), Usage: "start the software clock off by this much (demos of clock sync)"},
	}
}

func clientConfig(c *cli.Context, log *slog.Logger) client.Config {
	return client.Config{
		Broker: c.String("broker"), PubSub: c.String("pubsub"),
		Timeout: c.Duration("timeout"), Retries: c.Int("retries"), Skew: c.Duration("clock-skew"),
		Logger: log,
	}
}

func clientCommand() *cli.Command {
	return &cli.Command{
		Name:  "client",
		Usage: "chat in the terminal (scripted when stdin is not a terminal)",
		Description: "On a terminal: a prompt with line editing; type /help. Otherwise it runs one\n" +
			"command per line, waits for each reply, and exits at the end of input.\n" +
			"Commands: /register USER PASS, /login USER PASS, /logout, /channels, /users,\n" +
			"/create NAME [DESCRIPTION...], /join NAME, /leave [NAME], /msg USER TEXT...,\n" +
			"/history [NAME|@USER] [N], /time, /status, /help, /quit; any other line posts.",
		Flags: append(endpointFlags(),
			&cli.BoolFlag{Name: "json", EnvVars: envs("CHAT_JSON"), Usage: "print one JSON object per line for every reply and event"},
			&cli.DurationFlag{Name: "linger", EnvVars: envs("CHAT_LINGER"), Usage: "scripted: keep printing incoming messages this long after the last command"},
		),
		Action: func(c *cli.Context) error {
			interactive := term.IsTerminal(int(os.Stdin.Fd()))
			// A terminal in raw mode has no room for log lines: log to a file
			// only if asked, else keep quiet below warnings.
			log := slog.New(slog.DiscardHandler)
			if !interactive {
				var err error
				if log, err = logger(c); err != nil {
					return err
				}
			}
			cl, err := client.Dial(c.Context, clientConfig(c, log.With("role", "client")))
			if err != nil {
				return err
			}
			defer cl.Close()
			return console.Run(c.Context, cl, console.Options{
				JSON: c.Bool("json"), Interactive: interactive, Linger: c.Duration("linger"), Logger: log,
			})
		},
	}
}

func botCommand() *cli.Command {
	return &cli.Command{
		Name:  "bot",
		Usage: "a user that posts numbered messages and survives failures",
		Description: "Registers itself when needed, logs in, creates and joins its channel, then posts\n" +
			"--rate messages per second, riding through timeouts and restarts of every role.",
		Flags: append(endpointFlags(),
			&cli.Float64Flag{Name: "rate", Value: 5, EnvVars: envs("CHAT_BOT_RATE"), Usage: "messages per second"},
			&cli.StringFlag{Name: "channel", Value: "general", EnvVars: envs("CHAT_BOT_CHANNEL"), Usage: "channel to post to"},
			&cli.StringFlag{Name: "name", EnvVars: envs("CHAT_BOT_NAME"), Usage: "user name (default bot-HOSTNAME)"},
			&cli.StringFlag{Name: "password", EnvVars: envs("CHAT_BOT_PASSWORD"), Usage: "password (default: derived from the name; set one for a real deployment)"},
			&cli.IntFlag{Name: "count", EnvVars: envs("CHAT_BOT_COUNT"), Usage: "stop after this many acknowledged posts (0: never)"},
		),
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			name := c.String("name")
			if name == "" {
				host, _ := os.Hostname()
				name = "bot-" + sanitize(host)
			}
			pass := c.String("password")
			if pass == "" {
				pass = "bot-password-" + name
			}
			log = log.With("role", "bot", "name", name)
			log.Info("ready", "channel", c.String("channel"), "rate", c.Float64("rate"))
			return bot.Run(c.Context, bot.Config{
				Client: clientConfig(c, log), Name: name, Password: pass,
				Channel: c.String("channel"), Rate: c.Float64("rate"), Count: c.Int("count"), Logger: log,
			})
		},
	}
}

// sanitize makes s a valid user name.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 128 && (r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	out := b.String()
	if len(out) > wire.MaxNameLen-4 {
		out = out[:wire.MaxNameLen-4]
	}
	if out == "" {
		out = "x"
	}
	return out
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show each server's role, epoch, log position and clock",
		Flags: append(endpointFlags(),
			&cli.BoolFlag{Name: "json", EnvVars: envs("CHAT_JSON"), Usage: "print the status as JSON"},
		),
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			cfg := clientConfig(c, log)
			if !c.IsSet("retries") {
				cfg.Retries = 3
			}
			cl, err := client.Dial(c.Context, cfg)
			if err != nil {
				return err
			}
			defer cl.Close()
			st, err := cl.Status(c.Context)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			return printStatus(os.Stdout, st, c.Bool("json"))
		},
	}
}

func printStatus(w io.Writer, st *wire.StatusReply, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(w).Encode(st)
	}
	fmt.Fprintf(w, "leader: server %d, epoch %d, log index %d\n", st.Leader, st.Epoch, st.Index)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tROLE\tEPOCH\tINDEX\tLAG\tCLOCK CORRECTION\tCLOCK OFFSET")
	for _, s := range st.Servers {
		if s.Role == wire.RoleUnreachable {
			fmt.Fprintf(tw, "%d\t%s\t-\t-\t-\t-\t-\n", s.ID, s.Role)
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%+.3fms\t%+.3fms\n", s.ID, s.Role, s.Epoch, s.Index, s.Lag, s.Correction, s.Offset)
	}
	return tw.Flush()
}

func healthCommand() *cli.Command {
	return &cli.Command{
		Name:  "health",
		Usage: "exit 0 if a role answers (for container healthchecks: no shell needed)",
		Description: "--broker checks that the broker answers a request (a reply or its own\n" +
			"\"unavailable\" both prove it works); --peer checks that a server answers a probe\n" +
			"on its peer port; --zmtp checks that a port completes a ZeroMQ handshake.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "broker", Usage: "a broker's client endpoint, e.g. tcp://localhost:5555"},
			&cli.StringFlag{Name: "peer", Usage: "a server's peer endpoint, e.g. tcp://localhost:5561"},
			&cli.StringFlag{Name: "zmtp", Usage: "any ZeroMQ endpoint that must complete a handshake, e.g. tcp://localhost:5558"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Second, Usage: "how long to wait"},
			clusterSecretFlag(),
		},
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			switch {
			case c.String("broker") != "":
				return healthRequest(ctx, c.String("broker"), [][]byte{nil, wire.Encode(wire.Request{Service: wire.Ping})}, func(m zmq4.Msg) bool {
					var r wire.Reply
					return len(m.Frames) == 2 && json.Unmarshal(m.Frames[1], &r) == nil
				})
			case c.String("peer") != "":
				secret, err := readClusterSecret(c)
				if err != nil {
					return fmt.Errorf("health: %w", err)
				}
				return healthRequest(ctx, c.String("peer"), [][]byte{[]byte(`{"type":"probe","n":1}`)}, func(m zmq4.Msg) bool {
					return len(m.Frames) == 1 && strings.Contains(string(m.Frames[0]), `"state"`)
				}, zmqx.Cluster(secret)...)
			case c.String("zmtp") != "":
				sock := zmq4.NewSub(ctx)
				defer sock.Close()
				if err := sock.Dial(zmqx.Endpoint(c.String("zmtp"))); err != nil {
					return fmt.Errorf("health: %s: %w", c.String("zmtp"), err)
				}
				return nil
			}
			return errors.New("health: say what to check: --broker, --peer or --zmtp")
		},
	}
}

// healthRequest sends frames on a DEALER and waits for an answer that ok accepts.
func healthRequest(ctx context.Context, endpoint string, frames [][]byte, ok func(zmq4.Msg) bool, opts ...zmq4.Option) error {
	sock := zmq4.NewDealer(ctx, append([]zmq4.Option{zmq4.WithTimeout(zmqx.SendTimeout), zmq4.WithDialerMaxRetries(2)}, opts...)...)
	defer sock.Close()
	if err := sock.Dial(zmqx.Endpoint(endpoint)); err != nil {
		return fmt.Errorf("health: %s: %w", endpoint, err)
	}
	if err := sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		return fmt.Errorf("health: %s: %w", endpoint, err)
	}
	in := zmqx.NewInbox(ctx, sock, 1)
	select {
	case m, open := <-in.C:
		if open && ok(m) {
			return nil
		}
		return fmt.Errorf("health: %s answered something unexpected", endpoint)
	case <-ctx.Done():
		return fmt.Errorf("health: %s did not answer in time", endpoint)
	}
}
