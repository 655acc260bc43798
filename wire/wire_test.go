package wire

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// strict decodes b into v, failing on unknown fields (a typo in an example).
func strict(t *testing.T, name string, b []byte, v any) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// TestProtocolExamples decodes every example of PROTOCOL.md (they live in
// testdata/protocol) into the types the code uses, and checks PROTOCOL.md
// still shows each one verbatim.
func TestProtocolExamples(t *testing.T) {
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("testdata/protocol/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	data := map[string]any{
		"register": &Credentials{}, "login": &Credentials{}, "create": &CreateRequest{},
		"join": &NameRequest{}, "post": &PostRequest{}, "dm": &DMRequest{}, "history": &HistoryRequest{},
	}
	replies := map[string]any{
		"login": &LoginReply{}, "create": &ChannelsReply{}, "post": &MessageReply{},
		"history": &HistoryReply{}, "time": &TimeReply{},
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.TrimSpace(b)
		name := filepath.Base(f)
		if !bytes.Contains(doc, b) {
			t.Errorf("PROTOCOL.md does not show %s verbatim", name)
		}
		service, kind, _ := strings.Cut(strings.TrimSuffix(name, ".json"), ".")
		switch kind {
		case "request":
			var r Request
			strict(t, name, b, &r)
			if r.Service != service {
				t.Errorf("%s: service %q", name, r.Service)
			}
			if d, ok := data[service]; ok {
				strict(t, name+" data", r.Data, d)
			}
		case "reply":
			var r Reply
			strict(t, name, b, &r)
			if r.OK != (r.Error == nil) {
				t.Errorf("%s: ok=%v with error %v", name, r.OK, r.Error)
			}
			if d, ok := replies[service]; ok && r.OK {
				strict(t, name+" data", r.Data, d)
			}
		case "publication":
			var p Publication
			strict(t, name, b, &p)
			if p.Type != service && !(service == "message" && p.Type == EventMessage) {
				t.Errorf("%s: type %q", name, p.Type)
			}
		case "control":
			var h Heartbeat
			strict(t, name, b, &h)
		default:
			t.Errorf("%s: unknown kind %q", name, kind)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"ana", true}, {"Ana", true}, {"rust-fans.2", true}, {"a_b", true}, {"9lives", true},
		{"", false}, {"-x", false}, {".x", false}, {"a b", false}, {"a/b", false},
		{"ação", false}, {strings.Repeat("a", MaxNameLen), true}, {strings.Repeat("a", MaxNameLen+1), false},
		{"a\x00", false}, {"a\n", false},
	} {
		if err := ValidName("user", tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestValidText(t *testing.T) {
	for _, tc := range []struct {
		text string
		code string
	}{
		{"hello", ""}, {"línea\ncon\ttab", ""}, {"ü€😀", ""},
		{"bad \x1b[31m escape", CodeBadRequest}, {"\xff\xfe", CodeBadRequest},
		{strings.Repeat("x", MaxTextLen+1), CodeTooLarge},
	} {
		err := ValidText("message", tc.text, MaxTextLen)
		got := ""
		if err != nil {
			got = err.Code
		}
		if got != tc.code {
			t.Errorf("ValidText(%.20q) code %q, want %q", tc.text, got, tc.code)
		}
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code string
		says string
	}{
		{`not json`, CodeBadRequest, "invalid JSON"},
		{`[]`, CodeBadRequest, "expected a object"},
		{`{"data":{}}`, CodeBadRequest, `no "service"`},
		{`{"service":5}`, CodeBadRequest, `field "service" must be a string`},
		{`{"service":"post","req":"x"}`, CodeBadRequest, `field "req" must be a number`},
		{`{"service":"post","unknown":1}`, "", ""},
		{`{"service":"post","data":` + strings.Repeat(" ", MaxRequestBytes) + `{}}`, CodeTooLarge, "over the limit"},
	} {
		_, err := DecodeRequest([]byte(tc.in))
		if tc.code == "" {
			if err != nil {
				t.Errorf("DecodeRequest(%.30q): %v", tc.in, err)
			}
			continue
		}
		if err == nil || err.Code != tc.code || !strings.Contains(err.Message, tc.says) {
			t.Errorf("DecodeRequest(%.30q) = %v, want %s containing %q", tc.in, err, tc.code, tc.says)
		}
	}
}

func TestDecodeData(t *testing.T) {
	r := &Request{Service: "post", Data: json.RawMessage(`{"channel":1}`)}
	var p PostRequest
	err := DecodeData(r, &p)
	if err == nil || !strings.Contains(err.Message, `field "channel" must be a string`) {
		t.Fatalf("got %v", err)
	}
	if err := DecodeData(&Request{Service: "post"}, &p); err == nil || !strings.Contains(err.Message, `missing "data"`) {
		t.Fatalf("missing data: %v", err)
	}
}

func TestTopicsDoNotCollide(t *testing.T) {
	topics := []string{ChannelTopic("ana"), ChannelTopic("anabela"), DMTopic("ana"), DMTopic("anabela")}
	for i, a := range topics {
		for j, b := range topics {
			if i != j && strings.HasPrefix(b, a) {
				t.Errorf("topic %q is a prefix of %q: a subscriber of one gets the other", a, b)
			}
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	files, _ := filepath.Glob("testdata/protocol/*.request.json")
	for _, name := range files {
		b, _ := os.ReadFile(name)
		f.Add(b)
	}
	f.Add([]byte(`{"service":"post","data":null}`))
	f.Add([]byte(`{"service":"","data":{"x":[1,2,{"y":"\u0000"}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if (r == nil) == (err == nil) {
			t.Fatalf("exactly one of request and error must be set: %v %v", r, err)
		}
		if err != nil {
			if err.Code == "" || err.Message == "" {
				t.Fatalf("error without code or message: %+v", err)
			}
			return
		}
		for _, v := range []any{&Credentials{}, &PostRequest{}, &DMRequest{}, &HistoryRequest{}, &CreateRequest{}, &NameRequest{}} {
			_ = DecodeData(r, v)
		}
	})
}
