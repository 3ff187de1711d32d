package wstotcp

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// unescape interprets the escapes of `preamble`, `health_send` and
// `health_expect` (README, PROXY protocol and preamble): `\n`, `\r`,
// `\t`, `\\` and `\xHH` (one byte, two hex digits). A backslash before
// any other character is kept as it is, so that `\{` still reaches
// Caddy's replacer as an escaped brace.
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch e := s[i+1]; e {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case '\\':
			b.WriteByte('\\')
		case 'x':
			if i+3 >= len(s) {
				return "", fmt.Errorf(`\x at offset %d: expected two hex digits`, i)
			}
			hi, ok1 := unhex(s[i+2])
			lo, ok2 := unhex(s[i+3])
			if !ok1 || !ok2 {
				return "", fmt.Errorf(`\x at offset %d: expected two hex digits, got %q`, i, s[i+2:i+4])
			}
			b.WriteByte(hi<<4 | lo)
			i += 2
		default:
			b.WriteByte('\\')
			b.WriteByte(e)
		}
		i++
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// maxPreamble bounds an expanded preamble: placeholders such as request
// headers are client-controlled, and the preamble is written in one write
// before the upgrade.
const maxPreamble = 64 << 10

// expandPreamble is the preamble of one request: the template, its escapes
// interpreted at provision, with the request's placeholders replaced
// (unknown ones by nothing). Control characters (bytes below 0x20, and
// 0x7f) are removed from placeholder values: a client must not be able to
// add a line to a line-based login (a query parameter may hold %0A). The
// template's own escapes are not affected.
func expandPreamble(tmpl string, repl *caddy.Replacer) ([]byte, error) {
	if tmpl == "" {
		return nil, nil
	}
	out := tmpl
	if repl != nil {
		var err error
		out, err = repl.ReplaceFunc(tmpl, func(_ string, val any) (any, error) {
			return stripControl(caddy.ToString(val)), nil
		})
		if err != nil {
			return nil, fmt.Errorf("preamble: %v", err)
		}
	}
	if len(out) > maxPreamble {
		return nil, fmt.Errorf("preamble: %d bytes once expanded, more than %d", len(out), maxPreamble)
	}
	return []byte(out), nil
}

// stripControl removes ASCII control characters.
func stripControl(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x20 && c != 0x7f {
			b.WriteByte(c)
		}
	}
	return b.String()
}
