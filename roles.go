package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"chat/broker"
	"chat/internal/zmqx"
	"chat/proxy"
	"chat/server"
)

// clusterSecretFlag names the file of the cluster secret: the ZMTP PLAIN
// password servers present to the broker's backend, the pubsub's frontend
// and each other's peer ports.
func clusterSecretFlag() cli.Flag {
	return &cli.StringFlag{Name: "cluster-secret-file", EnvVars: envs("CHAT_CLUSTER_SECRET_FILE"),
		Usage: "file holding the cluster secret the servers authenticate with (or set CHAT_CLUSTER_SECRET)"}
}

// readClusterSecret returns the cluster secret: the file named by
// --cluster-secret-file, else CHAT_CLUSTER_SECRET, else none.
func readClusterSecret(c *cli.Context) (string, error) {
	secret := os.Getenv("CHAT_CLUSTER_SECRET")
	if f := c.String("cluster-secret-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("--cluster-secret-file: %w", err)
		}
		if secret = strings.TrimSpace(string(b)); secret == "" {
			return "", fmt.Errorf("--cluster-secret-file %s is empty", f)
		}
	}
	if secret == "" {
		return "", nil
	}
	if err := zmqx.CheckSecret(secret); err != nil {
		return "", err
	}
	return secret, nil
}

// clusterSecret is readClusterSecret for a role, which warns once when there
// is none: its cluster ports then accept anyone.
func clusterSecret(c *cli.Context, log *slog.Logger) (string, error) {
	secret, err := readClusterSecret(c)
	if err == nil && secret == "" {
		log.Warn("no cluster secret: any process can connect as a server or publish; set CHAT_CLUSTER_SECRET " +
			"or --cluster-secret-file to the same secret (16-255 bytes) on the broker, the pubsub and every server")
	}
	return secret, err
}

func brokerCommand() *cli.Command {
	return &cli.Command{
		Name:  "broker",
		Usage: "route client requests to the leading server and replies back",
		Description: "Clients connect to the frontend (ROUTER), servers to the backend. Servers announce\n" +
			"themselves with heartbeats carrying their epoch; requests go to the leader of the\n" +
			"newest epoch only, and wait briefly for one during a failover.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "frontend", Value: "tcp://*:5555", EnvVars: envs("CHAT_BROKER_FRONTEND"), Usage: "endpoint to bind for clients"},
			&cli.StringFlag{Name: "backend", Value: "tcp://*:5556", EnvVars: envs("CHAT_BROKER_BACKEND"), Usage: "endpoint to bind for servers"},
			&cli.DurationFlag{Name: "wait", Value: broker.DefaultWait, EnvVars: envs("CHAT_BROKER_WAIT"), Usage: "how long a request may wait for a leader"},
			clusterSecretFlag(),
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			log = log.With("role", "broker")
			secret, err := clusterSecret(c, log)
			if err != nil {
				return err
			}
			b, err := broker.Listen(c.Context, broker.Config{
				Frontend: c.String("frontend"), Backend: c.String("backend"), Wait: c.Duration("wait"), Logger: log,
				ClusterSecret: secret,
			})
			if err != nil {
				return err
			}
			fe, be := b.Addr()
			log.Info("ready", "frontend", fe, "backend", be)
			return serve(c.Context, log, b.Serve, b.Close)
		},
	}
}

func pubsubCommand() *cli.Command {
	return &cli.Command{
		Name:  "pubsub",
		Usage: "fan publications out from the servers to subscribers (XSUB/XPUB)",
		Description: "Servers publish into the frontend; clients subscribe at the backend, by topic\n" +
			"prefix, exactly as with a ZeroMQ XSUB/XPUB proxy.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "frontend", Value: "tcp://*:5557", EnvVars: envs("CHAT_PUBSUB_FRONTEND"), Usage: "endpoint to bind for publishers"},
			&cli.StringFlag{Name: "backend", Value: "tcp://*:5558", EnvVars: envs("CHAT_PUBSUB_BACKEND"), Usage: "endpoint to bind for subscribers"},
			&cli.IntFlag{Name: "hwm", Value: 10000, EnvVars: envs("CHAT_PUBSUB_HWM"), Usage: "messages queued per subscriber before dropping"},
			clusterSecretFlag(),
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			log = log.With("role", "pubsub")
			secret, err := clusterSecret(c, log)
			if err != nil {
				return err
			}
			p, err := proxy.Listen(c.Context, proxy.Config{
				Frontend: c.String("frontend"), Backend: c.String("backend"), HWM: c.Int("hwm"), Logger: log,
				ClusterSecret: secret,
			})
			if err != nil {
				return err
			}
			fe, be := p.Addr()
			log.Info("ready", "frontend", fe, "backend", be)
			return serve(c.Context, log, p.Serve, p.Close)
		},
	}
}

func serverCommand() *cli.Command {
	def := server.DefaultConfig(1)
	return &cli.Command{
		Name:  "server",
		Usage: "hold the replicated state; the leader answers requests",
		Description: "Three servers share one data directory (the log, the epochs, the leader lock).\n" +
			"Exactly one leads; the others tail the log as hot standbys and take over within\n" +
			"a second when it dies or stops answering. The JWT key is CHAT_JWT_SECRET (or the\n" +
			"file named by --jwt-secret-file); without either, a key file in the data directory.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "id", Required: true, EnvVars: envs("CHAT_SERVER_ID"), Usage: "this server's id (1, 2, 3...): the highest live id wins elections"},
			&cli.StringFlag{Name: "broker", Value: def.Broker, EnvVars: envs("CHAT_SERVER_BROKER"), Usage: "the broker's backend endpoint"},
			&cli.StringFlag{Name: "pubsub", Value: def.PubSub, EnvVars: envs("CHAT_SERVER_PUBSUB"), Usage: "the pubsub's frontend endpoint"},
			&cli.StringFlag{Name: "listen", EnvVars: envs("CHAT_SERVER_LISTEN"), Usage: "endpoint to bind for peers (default tcp://*:556ID)"},
			&cli.StringFlag{Name: "peers", Value: "1=tcp://localhost:5561,2=tcp://localhost:5562,3=tcp://localhost:5563", EnvVars: envs("CHAT_SERVER_PEERS"), Usage: "every server's peer endpoint, ID=ENDPOINT,..."},
			&cli.StringFlag{Name: "data", Value: def.Dir, EnvVars: envs("CHAT_DATA"), Usage: "the data directory, shared by all servers"},
			&cli.StringFlag{Name: "jwt-secret-file", EnvVars: envs("CHAT_JWT_SECRET_FILE"), Usage: "file holding the JWT key (e.g. a compose secret)"},
			&cli.DurationFlag{Name: "clock-skew", EnvVars: envs("CHAT_CLOCK_SKEW"), Usage: "start the software clock off by this much (demos of clock sync)"},
			&cli.DurationFlag{Name: "clock-sync", Value: 2 * time.Second, EnvVars: envs("CHAT_CLOCK_SYNC"), Usage: "how often the leader synchronizes the servers' clocks (Berkeley)"},
			&cli.DurationFlag{Name: "token-ttl", Value: 24 * time.Hour, EnvVars: envs("CHAT_TOKEN_TTL"), Usage: "how long a login lasts"},
			clusterSecretFlag(),
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			id := c.Int("id")
			cfg := server.DefaultConfig(id)
			cfg.Broker, cfg.PubSub, cfg.Dir = c.String("broker"), c.String("pubsub"), c.String("data")
			if l := c.String("listen"); l != "" {
				cfg.Listen = l
			}
			if cfg.Peers, err = server.ParsePeers(c.String("peers")); err != nil {
				return fmt.Errorf("--peers: %w", err)
			}
			cfg.ClockSkew, cfg.ClockSync, cfg.TokenTTL = c.Duration("clock-skew"), c.Duration("clock-sync"), c.Duration("token-ttl")
			cfg.Secret = os.Getenv("CHAT_JWT_SECRET")
			if f := c.String("jwt-secret-file"); f != "" {
				b, err := os.ReadFile(f)
				if err != nil {
					return fmt.Errorf("--jwt-secret-file: %w", err)
				}
				cfg.Secret = strings.TrimSpace(string(b))
			}
			if cfg.ClusterSecret, err = clusterSecret(c, log.With("role", "server", "id", id)); err != nil {
				return err
			}
			cfg.Logger = log
			s, err := server.Listen(c.Context, cfg)
			if err != nil {
				return fmt.Errorf("server %d: %w", id, err)
			}
			log = log.With("role", "server", "id", id)
			log.Info("ready", "peers", s.PeerAddr(), "data", cfg.Dir)
			return serve(c.Context, log, s.Serve, s.Close)
		},
	}
}
