package console

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"chat/client"
	"chat/wire"
)

// session is the state of one Run: the current channel and where to print.
type session struct {
	c       *client.Client
	opts    Options
	out     printer
	term    *term.Terminal // interactive only
	current string         // the channel plain lines are posted to
}

// command is one /command.
type command struct {
	name  string
	args  string // usage after the name
	help  string
	run   func(s *session, ctx context.Context, args []string, rest string) (result, error)
	nargs [2]int // accepted count of arguments (max -1: any)
}

// result is a successful command's output: data is the JSON reply's fields
// (a struct or map marshalled after "type", "command" and "ok"), lines the
// text for people.
type result struct {
	data  any
	lines []string
}

// usageError is a command line that can't be run as written: msg, or the
// command's usage and why.
type usageError struct{ cmd, why, msg string }

func (e *usageError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	u := "usage: /" + e.cmd
	if c := lookup(e.cmd); c != nil && c.args != "" {
		u += " " + c.args
	}
	if e.why != "" {
		u += " (" + e.why + ")"
	}
	return u
}

var commands []*command

func init() {
	commands = []*command{
		{name: "register", args: "USER PASSWORD", help: "create an account", nargs: [2]int{1, 2}, run: (*session).register},
		{name: "login", args: "USER PASSWORD", help: "log in; rejoins your channels", nargs: [2]int{1, 2}, run: (*session).login},
		{name: "logout", help: "log out", run: (*session).logout},
		{name: "channels", help: "list the channels", run: (*session).channels},
		{name: "users", help: "list the users and who is online", run: (*session).users},
		{name: "create", args: "NAME [DESCRIPTION...]", help: "create a channel and post there", nargs: [2]int{1, -1}, run: (*session).create},
		{name: "join", args: "NAME", help: "join a channel and post there", nargs: [2]int{1, 1}, run: (*session).join},
		{name: "leave", args: "[NAME]", help: "leave a channel (default: the current one)", nargs: [2]int{0, 1}, run: (*session).leave},
		{name: "msg", args: "USER TEXT...", help: "send a direct message", nargs: [2]int{2, -1}, run: (*session).msg},
		{name: "history", args: "[NAME|@|@USER] [N]", help: "the last N (default 50) messages of a channel (default: the current one), of your direct messages (@) or of those with USER (@USER)", nargs: [2]int{0, 2}, run: (*session).history},
		{name: "time", help: "the servers' time and this computer's clock offset", run: (*session).time},
		{name: "status", help: "the servers, their roles and which one leads", run: (*session).status},
		{name: "help", help: "this list", run: (*session).help},
		{name: "quit", help: "leave the chat (also Ctrl-D)"},
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// exec runs one input line and prints its outcome. It reports whether the
// user asked to quit.
func (s *session) exec(ctx context.Context, line string) (quit bool) {
	if strings.TrimSpace(line) == "" {
		return false
	}
	if !strings.HasPrefix(line, "/") || strings.HasPrefix(line, "//") {
		text := strings.TrimPrefix(line, "/") // "//x" posts "/x"
		r, err := s.post(ctx, text)
		s.report("post", r, err)
		return false
	}
	name, rest, _ := strings.Cut(line[1:], " ")
	rest = strings.TrimLeft(rest, " \t")
	cmd := lookup(name)
	if cmd == nil {
		s.localError(name, fmt.Sprintf("unknown command /%s: /help lists the commands", name))
		return false
	}
	if cmd.name == "quit" {
		return true
	}
	args := strings.Fields(rest)
	if len(args) < cmd.nargs[0] || (cmd.nargs[1] >= 0 && len(args) > cmd.nargs[1]) {
		why := "missing argument"
		if len(args) > cmd.nargs[0] {
			why = "too many arguments"
		}
		s.localError(name, (&usageError{cmd: name, why: why}).Error())
		return false
	}
	r, err := cmd.run(s, ctx, args, rest)
	s.report(name, r, err)
	return false
}

// report prints a command's outcome.
func (s *session) report(cmd string, r result, err error) {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		s.localError(cmd, ue.Error())
	case err != nil:
		if s.opts.JSON {
			s.json(jsonObject{{"type", "reply"}, {"command", cmd}, {"ok", false}, {"error", err.Error()}, {"code", errorCode(err)}}, nil)
		} else {
			s.linef("error: %s", err)
		}
	case s.opts.JSON:
		s.json(jsonObject{{"type", "reply"}, {"command", cmd}, {"ok", true}}, r.data)
	default:
		for _, l := range r.lines {
			s.out.line(l)
		}
	}
	s.updatePrompt()
}

// errorCode is the "code" of a failed reply: the servers' code, or
// "unreachable" when no server answered.
func errorCode(err error) string {
	if code := wire.ErrorCode(err); code != "" {
		return code
	}
	var ue *client.UnreachableError
	if errors.As(err, &ue) {
		return "unreachable"
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, client.ErrClosed) {
		return "canceled"
	}
	return "client"
}

func (s *session) localError(cmd, msg string) {
	if s.opts.JSON {
		s.json(jsonObject{{"type", "error"}, {"command", cmd}, {"error", msg}}, nil)
		return
	}
	s.out.line(msg)
}

func (s *session) linef(format string, args ...any) { s.out.line(fmt.Sprintf(format, args...)) }

func (s *session) updatePrompt() {
	if s.term == nil {
		return
	}
	if s.current != "" {
		s.term.SetPrompt("#" + s.current + "> ")
	} else {
		s.term.SetPrompt("> ")
	}
}

// password returns args[1], or asks for it without echo on a terminal.
func (s *session) password(cmd string, args []string) (string, error) {
	if len(args) == 2 {
		return args[1], nil
	}
	if s.term == nil {
		return "", &usageError{cmd: cmd, why: "missing argument"}
	}
	pw, err := s.term.ReadPassword("password: ")
	if err != nil {
		return "", fmt.Errorf("read the password: %w", err)
	}
	return pw, nil
}

func (s *session) register(ctx context.Context, args []string, _ string) (result, error) {
	pw, err := s.password("register", args)
	if err != nil {
		return result{}, err
	}
	if err := s.c.Register(ctx, args[0], pw); err != nil {
		return result{}, err
	}
	return result{
		data:  map[string]string{"user": args[0]},
		lines: []string{fmt.Sprintf("registered %s: now /login %s", args[0], args[0])},
	}, nil
}

func (s *session) login(ctx context.Context, args []string, _ string) (result, error) {
	pw, err := s.password("login", args)
	if err != nil {
		return result{}, err
	}
	r, err := s.c.Login(ctx, args[0], pw)
	s.current = "" // a login attempt ends the previous session
	if err != nil {
		return result{}, err
	}
	if len(r.Channels) > 0 {
		s.current = r.Channels[0]
	}
	line := "logged in as " + r.User
	if len(r.Channels) > 0 {
		line += "; member of " + hashes(r.Channels) + "; posting to #" + s.current
	} else {
		line += "; /channels lists the channels, /join NAME joins one"
	}
	out := *r
	out.Token = "" // the token is the session's secret: not for the output
	return result{data: loginData{out}, lines: []string{line}}, nil
}

// loginData is a login reply without its token.
type loginData struct{ wire.LoginReply }

func (d loginData) MarshalJSON() ([]byte, error) {
	return marshal(struct {
		User     string    `json:"user"`
		Expires  time.Time `json:"expires"`
		Channels []string  `json:"channels"`
		Mailbox  uint64    `json:"mailbox_seq"`
	}{d.User, d.Expires, orEmpty(d.Channels), d.Mailbox})
}

func (s *session) logout(ctx context.Context, _ []string, _ string) (result, error) {
	err := s.c.Logout(ctx)
	s.current = ""
	if err != nil {
		return result{}, err
	}
	return result{lines: []string{"logged out"}}, nil
}

func (s *session) channels(ctx context.Context, _ []string, _ string) (result, error) {
	list, err := s.c.Channels(ctx)
	if err != nil {
		return result{}, err
	}
	lines := make([]string, 0, len(list)+1)
	if len(list) == 0 {
		lines = append(lines, "no channels yet: /create NAME makes one")
	}
	for _, ch := range list {
		l := fmt.Sprintf("#%s (%d member%s, %d message%s)", ch.Name, ch.Members, plural(ch.Members), ch.Seq, plural(int(ch.Seq)))
		if ch.Joined {
			l += " [joined]"
		}
		if ch.Description != "" {
			l += " " + ch.Description
		}
		lines = append(lines, l)
	}
	return result{data: wire.ChannelsReply{Channels: orEmpty(list)}, lines: lines}, nil
}

func (s *session) users(ctx context.Context, _ []string, _ string) (result, error) {
	list, err := s.c.Users(ctx)
	if err != nil {
		return result{}, err
	}
	var lines []string
	for _, u := range list {
		switch {
		case u.Online:
			lines = append(lines, u.Name+" (online)")
		case u.LastSeen != nil:
			lines = append(lines, fmt.Sprintf("%s (last seen %s)", u.Name, u.LastSeen.Local().Format("2006-01-02 15:04:05")))
		default:
			lines = append(lines, u.Name)
		}
	}
	return result{data: wire.UsersReply{Users: orEmpty(list)}, lines: lines}, nil
}

func (s *session) create(ctx context.Context, args []string, rest string) (result, error) {
	name := args[0]
	desc := strings.TrimSpace(strings.TrimPrefix(rest, name))
	info, err := s.c.Create(ctx, name, desc)
	if err != nil {
		return result{}, err
	}
	if !info.Joined {
		if info, err = s.c.Join(ctx, name); err != nil {
			return result{}, fmt.Errorf("created #%s but could not join it: %w", name, err)
		}
	}
	s.current = name
	return result{
		data:  wire.ChannelsReply{Channels: []wire.ChannelInfo{info}},
		lines: []string{fmt.Sprintf("created #%s: posting there now", name)},
	}, nil
}

func (s *session) join(ctx context.Context, args []string, _ string) (result, error) {
	info, err := s.c.Join(ctx, args[0])
	if err != nil {
		return result{}, err
	}
	s.current = args[0]
	return result{
		data:  wire.ChannelsReply{Channels: []wire.ChannelInfo{info}},
		lines: []string{fmt.Sprintf("joined #%s (%d member%s): posting there now", info.Name, info.Members, plural(info.Members))},
	}, nil
}

func (s *session) leave(ctx context.Context, args []string, _ string) (result, error) {
	name := s.current
	if len(args) == 1 {
		name = args[0]
	}
	if name == "" {
		return result{}, &usageError{cmd: "leave", why: "not in a channel: name one"}
	}
	info, err := s.c.Leave(ctx, name)
	if err != nil {
		return result{}, err
	}
	line := "left #" + name
	if name == s.current {
		s.current = ""
		if joined := s.c.Joined(); len(joined) > 0 {
			s.current = joined[0]
			line += "; posting to #" + s.current
		}
	}
	return result{data: wire.ChannelsReply{Channels: []wire.ChannelInfo{info}}, lines: []string{line}}, nil
}

func (s *session) post(ctx context.Context, text string) (result, error) {
	if s.current == "" {
		return result{}, &usageError{msg: "not in a channel: /join NAME (or /create NAME) first, then type your message"}
	}
	m, err := s.c.Post(ctx, s.current, text)
	if err != nil {
		return result{}, err
	}
	// The message itself is shown when it arrives as an event.
	return result{data: wire.MessageReply{Message: m}}, nil
}

func (s *session) msg(ctx context.Context, args []string, rest string) (result, error) {
	text := strings.TrimLeft(strings.TrimPrefix(rest, args[0]), " \t")
	m, err := s.c.DM(ctx, args[0], text)
	if err != nil {
		return result{}, err
	}
	return result{data: wire.MessageReply{Message: m}}, nil
}

func (s *session) history(ctx context.Context, args []string, _ string) (result, error) {
	target, n := s.current, wire.DefaultHistory
	switch len(args) {
	case 1:
		// One argument is a count when it is a number and there is a
		// current channel; "/history NAME N" reaches a channel named by digits.
		if v, err := strconv.Atoi(args[0]); err == nil && s.current != "" {
			n = v
		} else {
			target = args[0]
		}
	case 2:
		v, err := strconv.Atoi(args[1])
		if err != nil {
			return result{}, &usageError{cmd: "history", why: fmt.Sprintf("N must be a number, not %q", args[1])}
		}
		target, n = args[0], v
	}
	if n < 1 || n > wire.MaxHistory {
		return result{}, &usageError{cmd: "history", why: fmt.Sprintf("N must be from 1 to %d", wire.MaxHistory)}
	}
	if target == "" {
		return result{}, &usageError{cmd: "history", why: "not in a channel: name one"}
	}
	req := wire.HistoryRequest{Channel: target, Limit: n}
	peer, direct := strings.CutPrefix(target, "@")
	if !direct {
		peer = ""
	} else {
		req = wire.HistoryRequest{Direct: true, Limit: n}
		if peer != "" {
			req.Limit = wire.MaxHistory // filtered here below
		}
	}
	h, err := s.c.History(ctx, req)
	if err != nil {
		return result{}, err
	}
	msgs := h.Messages
	if peer != "" {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m wire.Message) bool { return m.From != peer && m.To != peer })
		msgs = msgs[max(0, len(msgs)-n):]
	}
	var title string
	switch {
	case peer != "":
		title = "direct messages with " + peer
	case direct:
		title = "direct messages"
	default:
		title = "#" + target
	}
	lines := []string{fmt.Sprintf("-- %s: %d message%s --", title, len(msgs), plural(len(msgs)))}
	for _, m := range msgs {
		lines = append(lines, s.formatMessage(m, direct))
	}
	return result{data: wire.HistoryReply{Messages: orEmpty(msgs), Seq: h.Seq}, lines: lines}, nil
}

func (s *session) time(ctx context.Context, _ []string, _ string) (result, error) {
	ti, err := s.c.Time(ctx, s.opts.TimeSamples)
	if err != nil {
		return result{}, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return result{
		data: struct {
			Server  time.Time `json:"server_time"`
			Local   time.Time `json:"local_time"`
			Offset  float64   `json:"offset_ms"`
			RTT     float64   `json:"rtt_ms"`
			Error   float64   `json:"error_ms"`
			Samples int       `json:"samples"`
		}{ti.Server, ti.Local, ms(ti.Offset), ms(ti.RTT), ms(ti.Error), ti.Samples},
		lines: []string{fmt.Sprintf("server time %s; this computer's clock is off by %s ± %s (round trip %s, best of %d)",
			ti.Server.Local().Format("15:04:05.000"), signed(-ti.Offset), ti.Error.Round(time.Microsecond),
			ti.RTT.Round(time.Microsecond), ti.Samples)},
	}, nil
}

func (s *session) status(ctx context.Context, _ []string, _ string) (result, error) {
	st, err := s.c.Status(ctx)
	if err != nil {
		return result{}, err
	}
	lines := []string{fmt.Sprintf("leader: server %d, epoch %d, log index %d", st.Leader, st.Epoch, st.Index)}
	for _, sv := range st.Servers {
		if sv.Role == wire.RoleUnreachable {
			lines = append(lines, fmt.Sprintf("  server %d: unreachable", sv.ID))
			continue
		}
		lines = append(lines, fmt.Sprintf("  server %d: %s, epoch %d, index %d, lag %d, clock correction %.3fms, offset %.3fms",
			sv.ID, sv.Role, sv.Epoch, sv.Index, sv.Lag, sv.Correction, sv.Offset))
	}
	return result{data: st, lines: lines}, nil
}

func (s *session) help(context.Context, []string, string) (result, error) {
	type entry struct {
		Usage string `json:"usage"`
		Help  string `json:"help"`
	}
	var entries []entry
	lines := []string{"commands (anything else is posted to the current channel; start it with // to post a line beginning with /):"}
	for _, c := range commands {
		u := "/" + c.name
		if c.args != "" {
			u += " " + c.args
		}
		entries = append(entries, entry{u, c.help})
		lines = append(lines, fmt.Sprintf("  %-36s %s", u, c.help))
	}
	return result{data: map[string]any{"commands": entries}, lines: lines}, nil
}

// --- helpers ---

func hashes(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "#" + n
	}
	return strings.Join(out, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func signed(d time.Duration) string {
	if d >= 0 {
		return "+" + d.Round(time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// orEmpty makes a nil slice encode as [] rather than null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
