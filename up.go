package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
)

func upCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "run the whole system on this machine: broker, pubsub, three servers, a bot",
		Description: "Starts every role as a child process of this binary on the default ports, with\n" +
			"the servers' shared data under --data. A child that dies is restarted after a\n" +
			"second (kill the leader to watch a failover). Ctrl-C stops everything.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Value: ".chat", EnvVars: envs("CHAT_UP_DATA"), Usage: "directory for the servers' data and the pid files"},
			&cli.IntFlag{Name: "bots", Value: 1, EnvVars: envs("CHAT_UP_BOTS"), Usage: "how many bots to run"},
			&cli.Float64Flag{Name: "rate", Value: 5, EnvVars: envs("CHAT_UP_RATE"), Usage: "messages per second each bot posts"},
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			return up(c.Context, log, c)
		},
	}
}

// upPorts are the ports `chat up` binds: broker, pubsub, the servers' peers.
var upPorts = []int{5555, 5556, 5557, 5558, 5561, 5562, 5563}

// portsFree says which port is taken, if one is: every role would otherwise
// fail to bind and be restarted forever.
func portsFree(ports []int) error {
	for _, p := range ports {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return fmt.Errorf("up: port %d is in use (another chat up, or compose with published ports?): stop it and retry", p)
		}
		l.Close()
	}
	return nil
}

// child is one role run by `chat up`.
type child struct {
	name string
	args []string
	env  []string // added to this process's environment
}

func up(ctx context.Context, log *slog.Logger, c *cli.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	if err := portsFree(upPorts); err != nil {
		return err
	}
	dir := c.String("data")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	global := []string{"--log-level", c.String("log-level"), "--log-format", c.String("log-format")}
	// The roles authenticate each other with a secret of this run, unless
	// one is given (then they read it as they would alone).
	var cluster []string
	if os.Getenv("CHAT_CLUSTER_SECRET") == "" && os.Getenv("CHAT_CLUSTER_SECRET_FILE") == "" {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return fmt.Errorf("make a cluster secret: %w", err)
		}
		cluster = []string{"CHAT_CLUSTER_SECRET=" + hex.EncodeToString(secret)}
	}
	children := []*child{
		{name: "pubsub", args: []string{"pubsub"}, env: cluster},
		{name: "broker", args: []string{"broker"}, env: cluster},
	}
	for id := 3; id >= 1; id-- {
		children = append(children, &child{name: fmt.Sprintf("server-%d", id),
			args: []string{"server", "--id", strconv.Itoa(id), "--data", filepath.Join(dir, "data")}, env: cluster})
	}
	for i := 1; i <= c.Int("bots"); i++ {
		children = append(children, &child{name: fmt.Sprintf("bot-%d", i),
			args: []string{"bot", "--rate", strconv.FormatFloat(c.Float64("rate"), 'f', -1, 64), "--name", fmt.Sprintf("bot%d", i)}})
	}

	var out sync.Mutex // one line at a time on stderr
	ready := make(chan string, len(children))
	var wg sync.WaitGroup
	runCtx, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	for _, ch := range children {
		ch.args = append(append([]string{}, global...), ch.args...)
		wg.Go(func() { supervise(runCtx, log, exe, dir, ch, &out, ready) })
	}

	// Wait until every role said it is ready, showing progress.
	waiting := map[string]bool{}
	for _, ch := range children {
		waiting[ch.name] = true
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for len(waiting) > 0 {
		select {
		case name := <-ready:
			delete(waiting, name)
		case <-tick.C:
			var names []string
			for n := range waiting {
				names = append(names, n)
			}
			log.Info("waiting for roles to start", "waiting", strings.Join(names, ","))
		case <-ctx.Done():
			stop(log, stopAll, &wg)
			return nil
		}
	}
	out.Lock()
	fmt.Fprintf(os.Stderr, `
chat is up:
  broker    clients tcp://localhost:5555, servers tcp://localhost:5556
  pubsub    publishers tcp://localhost:5557, subscribers tcp://localhost:5558
  servers   1, 2, 3 (peers on 5561-5563), data in %s
  pid files %s/*.pid

Chat:      chat client            (or: go run . client)
Who leads: chat status
Failover:  kill -9 $(cat %s/server-N.pid)   with N the leader: it restarts as a follower
Stop:      Ctrl-C

`, filepath.Join(dir, "data"), dir, dir)
	out.Unlock()
	<-ctx.Done()
	stop(log, stopAll, &wg)
	return nil
}

// stop sends every role SIGTERM and waits for all of them.
func stop(log *slog.Logger, stopAll context.CancelFunc, wg *sync.WaitGroup) {
	log.Info("stopping")
	stopAll()
	wg.Wait()
}

// supervise runs ch, restarting it a second after it dies, until ctx ends;
// then it sends SIGTERM and waits (SIGKILL after 5s).
func supervise(ctx context.Context, log *slog.Logger, exe, dir string, ch *child, out *sync.Mutex, ready chan<- string) {
	announced := false
	for ctx.Err() == nil {
		cmd := exec.Command(exe, ch.args...)
		if ch.env != nil {
			cmd.Env = append(os.Environ(), ch.env...)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if err := cmd.Start(); err != nil {
			log.Error("start role", "role", ch.name, "err", err)
			return
		}
		pidFile := filepath.Join(dir, ch.name+".pid")
		_ = os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
		lines := make(chan struct{})
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				if !announced && (strings.Contains(line, "msg=ready") || strings.Contains(line, `"msg":"ready"`)) {
					announced = true
					ready <- ch.name
				}
				out.Lock()
				fmt.Fprintf(os.Stderr, "%-9s| %s\n", ch.name, line)
				out.Unlock()
			}
		}()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait(); pw.Close() }()
		select {
		case err := <-exited:
			<-lines
			if ctx.Err() != nil {
				return
			}
			log.Warn("role exited: restarting in 1s", "role", ch.name, "pid", cmd.Process.Pid, "status", exitStatus(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			<-lines
			os.Remove(pidFile)
			return
		}
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}
