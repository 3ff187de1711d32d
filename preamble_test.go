package wstotcp

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestUnescape(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"plain", "plain"},
		{`PING\r\n`, "PING\r\n"},
		{`a\tb`, "a\tb"},
		{`back\\slash`, `back\slash`},
		{`\\n`, `\n`}, // an escaped backslash, then n
		{`\x00\x01\xfF\x7e`, "\x00\x01\xff~"},
		{`\x41BC`, "ABC"},
		{`\{not a placeholder\}`, `\{not a placeholder\}`}, // kept for Caddy's replacer
		{`\q`, `\q`},
		{`end\`, `end\`},
		{"RFB 003.008\\n", "RFB 003.008\n"},
	}
	for _, tt := range tests {
		got, err := unescape(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("unescape(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{`\x`, `\x4`, `\xZZ`, `\x4g`, `abc\x1`} {
		if got, err := unescape(bad); err == nil {
			t.Errorf("unescape(%q) = %q, want an error", bad, got)
		}
	}
}

// The preamble's placeholders come from the request; their values lose
// their control characters (a client must not add a line), the template's
// own escapes keep theirs.
func TestExpandPreamble(t *testing.T) {
	r := httptest.NewRequest("GET", "/ws?lang=fr%0D%0AADMIN%00&room=r1", nil)
	r.Header.Set("X-Token", "t0k")
	repl := caddyhttp.NewTestReplacer(r)
	repl.Set("http.auth.user.id", "alice\nbob")

	tmpl, err := unescape(`LOGIN {http.auth.user.id} {http.request.uri.query.lang} {http.request.header.X-Token} {http.request.uri.query.nope}\r\n\x00`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := expandPreamble(tmpl, repl)
	if err != nil {
		t.Fatal(err)
	}
	if want := "LOGIN alicebob frADMIN t0k \r\n\x00"; string(got) != want {
		t.Fatalf("preamble %q, want %q", got, want)
	}

	got, err = expandPreamble(`a \{literal\} b`, repl)
	if err != nil || string(got) != "a {literal} b" {
		t.Fatalf("escaped braces: %q %v", got, err)
	}

	big := strings.Repeat("x", maxPreamble)
	if _, err := expandPreamble(big+"{http.request.uri.query.room}", repl); err == nil {
		t.Fatal("a preamble over 64 KiB was accepted")
	}
	if got, _ := expandPreamble("", repl); got != nil {
		t.Fatalf("empty template: %q", got)
	}
}

func TestStripControl(t *testing.T) {
	for in, want := range map[string]string{
		"":             "",
		"abc":          "abc",
		"a\r\nb":       "ab",
		"\x00\x1f\x7f": "",
		"é ü":          "é ü",
	} {
		if got := stripControl(in); got != want {
			t.Errorf("stripControl(%q) = %q, want %q", in, got, want)
		}
	}
}
