// Package console is the terminal UI of `chat client`, on top of the client
// library: it reads commands, runs them one at a time and prints replies and
// incoming messages, as human-friendly lines or (Options.JSON) as one JSON
// object per line. Interactive on a terminal (a prompt with line editing that
// incoming messages never garble), scripted otherwise (one command per line,
// each waiting for its reply; it exits after the last one).
//
// The drawing is kept apart from the commands (printer and format*), so a
// full-screen UI can reuse the library without this package.
package console

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"chat/client"
)

// Options configure Run.
type Options struct {
	JSON        bool      // print one JSON object per line instead of text for people
	In          io.Reader // commands (default os.Stdin)
	Out         io.Writer // output (default os.Stdout)
	Interactive bool      // In is a terminal: prompt and line editing (raw mode when In is a terminal *os.File)
	// Linger keeps printing incoming messages this long after the end of
	// scripted input (default 0: exit right after the last reply).
	Linger      time.Duration
	TimeSamples int          // samples of /time (default 5)
	Logger      *slog.Logger // default: discard
}

// Run runs the console until the end of input, /quit or the end of ctx. It
// returns nil then, even if some commands failed (each failure was printed);
// it returns an error only when the terminal can't be set up. It does not
// close c.
//
// A read of In that is blocked when Run returns (a terminal, on ctx's end)
// is left behind: only the process's exit ends it.
func Run(ctx context.Context, c *client.Client, opts Options) error {
	if opts.In == nil {
		opts.In = os.Stdin
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.TimeSamples <= 0 {
		opts.TimeSamples = 5
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &session{c: c, opts: opts}

	var readLine func() (string, error)
	if opts.Interactive {
		if f, ok := opts.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fd := int(f.Fd())
			old, err := term.MakeRaw(fd)
			if err != nil {
				return fmt.Errorf("console: put the terminal in raw mode: %w", err)
			}
			defer func() { _ = term.Restore(fd, old) }()
		}
		t := term.NewTerminal(struct {
			io.Reader
			io.Writer
		}{opts.In, opts.Out}, "> ")
		if f, ok := opts.Out.(*os.File); ok {
			if w, h, err := term.GetSize(int(f.Fd())); err == nil {
				_ = t.SetSize(w, h)
			}
		}
		s.out = &termPrinter{t: t}
		s.term = t
		readLine = func() (string, error) {
			line, err := t.ReadLine()
			if errors.Is(err, term.ErrPasteIndicator) {
				err = nil
			}
			return line, err
		}
		if !opts.JSON {
			s.linef("chat: talking to %s; /help lists the commands, Ctrl-D quits", c.Config().Broker)
		}
	} else {
		s.out = &writerPrinter{w: opts.Out}
		r := bufio.NewReader(opts.In)
		readLine = func() (string, error) {
			line, err := r.ReadString('\n')
			if err == io.EOF && line != "" {
				err = nil
			}
			return strings.TrimRight(line, "\r\n"), err
		}
	}

	// Lines are read one at a time, on demand, so that a command may read
	// from the terminal itself (a password) and a script's commands run
	// strictly one after the other.
	want := make(chan struct{})
	lines := make(chan string)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(lines)
		for {
			select {
			case <-want:
			case <-done:
				return
			}
			line, err := readLine()
			if err != nil {
				if err != io.EOF {
					opts.Logger.Warn("read input", "err", err)
				}
				return
			}
			select {
			case lines <- line:
			case <-done:
				return
			}
		}
	}()

	stop := make(chan struct{})
	var printer sync.WaitGroup
	printer.Go(func() {
		for {
			select {
			case ev, ok := <-c.Events():
				if !ok {
					return
				}
				s.event(ev)
			case <-stop:
				return
			}
		}
	})
	finish := func() {
		close(stop)
		printer.Wait()
		// Print what already arrived, in order, by the one reader left,
		// including what the client has delivered but not handed over yet
		// (an own post, for one): Pending drops only once an event is in
		// the channel, so nothing pending and nothing buffered means done.
		for {
			select {
			case ev, ok := <-c.Events():
				if !ok {
					return
				}
				s.event(ev)
			case <-time.After(10 * time.Millisecond):
				if c.Pending() == 0 && len(c.Events()) == 0 {
					return
				}
			}
		}
	}

	for {
		select {
		case want <- struct{}{}:
		case <-ctx.Done():
			finish()
			return nil
		}
		select {
		case line, ok := <-lines:
			if !ok {
				if opts.Linger > 0 && !opts.Interactive {
					t := time.NewTimer(opts.Linger)
					select {
					case <-t.C:
					case <-ctx.Done():
					}
					t.Stop()
				}
				finish()
				return nil
			}
			if s.exec(ctx, line) {
				finish()
				return nil
			}
		case <-ctx.Done():
			finish()
			return nil
		}
	}
}

// printer writes whole lines; safe for concurrent use, so replies and events
// never interleave mid-line.
type printer interface {
	line(s string)
}

type writerPrinter struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *writerPrinter) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.w, s+"\n")
}

// termPrinter prints above the prompt: term.Terminal redraws the line being
// typed after the output.
type termPrinter struct {
	t *term.Terminal
}

func (p *termPrinter) line(s string) { _, _ = p.t.Write([]byte(s + "\n")) }
