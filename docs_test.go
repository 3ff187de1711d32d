package wstotcp

// The examples of the documentation (README.md and docs/*.md) are tested
// here, so that what a reader copies is what Caddy accepts.
//
// Every fenced code block names its language in its info string; the first
// word is the language (what GitHub highlights), a second word says how a
// Caddyfile block is tested:
//
//	```caddyfile            a whole Caddyfile (global options and/or sites):
//	                        adapted as it is.
//	```caddyfile site       the directives of one site block (handle_errors,
//	                        a ws_to_tcp directive...): adapted inside
//	                        "http://example.com { … }".
//	```caddyfile ws_to_tcp  subdirectives of one ws_to_tcp block (a lone
//	                        `origins` line, say): adapted inside
//	                        "http://example.com { ws_to_tcp localhost:5900 { … } }".
//	```caddyfile syntax     the directive's grammar (<placeholders>, a|b):
//	                        not adapted, but each subdirective it names must be
//	                        known to the parser and described in the docs.
//	```json                 parsed as JSON; each ws_to_tcp handler in it (a
//	                        whole config, or a handler object alone) is decoded
//	                        with unknown fields refused, and provisioned.
//	```sh                   a here-document written to a file named Caddyfile
//	                        is adapted; each `caddy ws-to-tcp …` line is parsed
//	                        by the command's flags.
//	```js, ```yaml          not checked.
//
// A fence without a language fails, and so does a Caddyfile-looking block
// given another language, so that no Caddyfile goes untested. A block that
// does not adapt fails with its file and the line of its opening fence.
// Adapting must also give no warning: examples are as `caddy fmt` writes
// them.
//
// The ws_to_tcp handlers of Caddyfile and JSON examples are then
// provisioned and validated as Caddy does on load. The files and
// environment variables the examples name are replaced by stand-ins
// (docStandIns, docEnv): an example that names a new file needs one there.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func init() {
	caddy.RegisterModule(docExecStub{})
}

// docExecStub stands in for the `exec` event handler of
// github.com/mholt/caddy-events-exec, which the events example of
// docs/operations.md uses and this build does not include: it reads the
// handler's Caddyfile arguments, `exec <command> [<args...>]`, and nothing
// more.
type docExecStub struct {
	Command string   `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
}

func (docExecStub) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.exec",
		New: func() caddy.Module { return new(docExecStub) },
	}
}

func (s *docExecStub) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the handler's name
	if !d.NextArg() {
		return d.ArgErr()
	}
	s.Command = d.Val()
	s.Args = d.RemainingArgs()
	return nil
}

// docBlock is one fenced code block of a documentation file.
type docBlock struct {
	file string // relative to the repository root
	line int    // of the opening fence, from 1
	lang string // the info string's first word
	role string // the rest of the info string
	text string // the content, without the fence's indentation
}

func (b docBlock) where() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// docFiles lists README.md and docs/*.md.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no docs/*.md files")
	}
	return append([]string{"README.md"}, files...)
}

// docLines reads a documentation file as lines.
func docLines(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(data), "\n")
}

// docBlocksOf returns the fenced code blocks of file. A fence may be
// indented (a block inside a list item); its indentation is removed from
// the block's lines.
func docBlocksOf(t *testing.T, file string) []docBlock {
	t.Helper()
	var blocks []docBlock
	var cur *docBlock
	var indent string
	var body []string
	for i, line := range docLines(t, file) {
		trimmed := strings.TrimLeft(line, " \t")
		if cur == nil {
			if !strings.HasPrefix(trimmed, "```") {
				continue
			}
			info := strings.Fields(strings.TrimPrefix(trimmed, "```"))
			cur = &docBlock{file: filepath.ToSlash(file), line: i + 1}
			if len(info) > 0 {
				cur.lang, cur.role = info[0], strings.Join(info[1:], " ")
			}
			indent, body = line[:len(line)-len(trimmed)], nil
			continue
		}
		if strings.TrimSpace(line) == "```" {
			cur.text = strings.Join(body, "\n") + "\n"
			blocks = append(blocks, *cur)
			cur = nil
			continue
		}
		body = append(body, strings.TrimPrefix(line, indent))
	}
	if cur != nil {
		t.Fatalf("%s: the code block opened here is never closed", cur.where())
	}
	return blocks
}

// docAllBlocks returns the code blocks of every documentation file.
func docAllBlocks(t *testing.T) []docBlock {
	t.Helper()
	var all []docBlock
	for _, f := range docFiles(t) {
		all = append(all, docBlocksOf(t, f)...)
	}
	return all
}

// docAdapt adapts a Caddyfile with Caddy's caddyfile adapter, as
// `caddy adapt` does, and turns warnings into errors.
func docAdapt(name, body string) ([]byte, error) {
	js, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(body), map[string]any{"filename": name})
	if err != nil {
		return nil, err
	}
	if len(warnings) > 0 {
		var msgs []string
		for _, w := range warnings {
			msgs = append(msgs, w.String())
		}
		return nil, fmt.Errorf("warnings: %s", strings.Join(msgs, "; "))
	}
	return js, nil
}

// numbered prefixes each line of s with its number, for failure messages.
func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, l)
	}
	return b.String()
}

// indentLines indents every non-empty line of s with prefix.
func indentLines(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// docCaddyfile is the Caddyfile a caddyfile block stands for (see the
// convention at the top of this file).
func docCaddyfile(b docBlock) (string, error) {
	switch b.role {
	case "":
		return b.text, nil
	case "site":
		return "http://example.com {\n" + indentLines(b.text, "\t") + "}\n", nil
	case "ws_to_tcp":
		return "http://example.com {\n\tws_to_tcp localhost:5900 {\n" + indentLines(b.text, "\t\t") + "\t}\n}\n", nil
	}
	return "", fmt.Errorf("unknown caddyfile block role %q: use none, site, ws_to_tcp or syntax", b.role)
}

// docStandIns writes stand-ins for the files the examples name and
// returns, for each path as the docs write it, the stand-in's path.
func docStandIns(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, keyPEM := docCertificate(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks := fmt.Sprintf(`{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "docs", "x": %q}]}`,
		base64.RawURLEncoding.EncodeToString(pub))
	web := filepath.Join(dir, "novnc")
	if err := os.Mkdir(web, 0o700); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"/etc/caddy/vnc-tokens": write("vnc-tokens", "# token: target\nvm1: 10.0.0.5:5900\n"),
		"/etc/caddy/jwks.json":  write("jwks.json", jwks),
		"/etc/ssl/vnc-ca.pem":   write("vnc-ca.pem", certPEM),
		"/usr/share/novnc":      web,
		"cert.pem":              write("cert.pem", certPEM),
		"key.pem":               write("key.pem", keyPEM),
	}
}

// docEnv sets the environment variables the examples' placeholders use.
func docEnv(t *testing.T) {
	t.Setenv("WS_TOKEN", "docs-example-token")
	t.Setenv("REDIS_PASSWORD", "docs-example-password")
}

// docCertificate returns a self-signed CA certificate for vnc.internal and
// its key, as PEM.
func docCertificate(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vnc.internal"},
		DNSNames:              []string{"vnc.internal"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

// docHandlers returns every ws_to_tcp handler object in a JSON document,
// wherever it sits (a whole config, or the handler alone).
func docHandlers(v any) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "ws_to_tcp" {
			found = append(found, v)
		}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			found = append(found, docHandlers(v[k])...)
		}
	case []any:
		for _, e := range v {
			found = append(found, docHandlers(e)...)
		}
	}
	return found
}

// docProvision decodes each ws_to_tcp handler of the JSON document js,
// refusing unknown fields, then provisions and validates it as Caddy does
// on load. It returns how many handlers it found.
func docProvision(t *testing.T, js []byte, standIns map[string]string) (int, error) {
	t.Helper()
	for doc, local := range standIns {
		from, _ := json.Marshal(doc)
		to, _ := json.Marshal(local)
		js = []byte(strings.ReplaceAll(string(js), string(from), string(to)))
	}
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		return 0, err
	}
	handlers := docHandlers(v)
	for i, obj := range handlers {
		delete(obj, "handler") // the module's name, which Caddy strips before decoding
		raw, err := json.Marshal(obj)
		if err != nil {
			return 0, err
		}
		h := new(Handler)
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(h); err != nil {
			return 0, fmt.Errorf("handler %d: decoding: %v", i+1, err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err = h.Provision(ctx)
		if err == nil {
			if v, ok := any(h).(caddy.Validator); ok {
				err = v.Validate()
			}
		}
		if c, ok := any(h).(caddy.CleanerUpper); ok {
			_ = c.Cleanup()
		}
		cancel()
		if err != nil {
			return 0, fmt.Errorf("handler %d: loading: %v", i+1, err)
		}
	}
	return len(handlers), nil
}

// TestDocsCaddyfileExamples adapts every caddyfile block of the
// documentation and loads its ws_to_tcp handlers.
func TestDocsCaddyfileExamples(t *testing.T) {
	docEnv(t)
	standIns := docStandIns(t)
	n := 0
	for _, b := range docAllBlocks(t) {
		if b.lang != "caddyfile" || b.role == "syntax" {
			continue
		}
		n++
		cfg, err := docCaddyfile(b)
		if err != nil {
			t.Errorf("%s: %v", b.where(), err)
			continue
		}
		js, err := docAdapt(b.where(), cfg)
		if err != nil {
			t.Errorf("%s: the example does not adapt: %v\n%s", b.where(), err, numbered(cfg))
			continue
		}
		if _, err := docProvision(t, js, standIns); err != nil {
			t.Errorf("%s: the example's ws_to_tcp handler does not load: %v\n%s", b.where(), err, numbered(cfg))
		}
	}
	if !t.Failed() && n < 20 {
		t.Errorf("found %d caddyfile examples; the docs have more: is the fence parsing broken?", n)
	}
}

// TestDocsJSONExamples parses every json block and loads its ws_to_tcp
// handlers.
func TestDocsJSONExamples(t *testing.T) {
	docEnv(t)
	standIns := docStandIns(t)
	n, handlers := 0, 0
	for _, b := range docAllBlocks(t) {
		if b.lang != "json" {
			continue
		}
		n++
		if !json.Valid([]byte(b.text)) {
			var v any
			err := json.Unmarshal([]byte(b.text), &v)
			t.Errorf("%s: not JSON: %v\n%s", b.where(), err, numbered(b.text))
			continue
		}
		found, err := docProvision(t, []byte(b.text), standIns)
		if err != nil {
			t.Errorf("%s: %v\n%s", b.where(), err, numbered(b.text))
		}
		handlers += found
	}
	if !t.Failed() && (n < 4 || handlers < 3) {
		t.Errorf("found %d json examples with %d ws_to_tcp handlers; the docs have more", n, handlers)
	}
}

// docHeredocStart matches a shell line that writes a here-document to a
// file named Caddyfile (`cat > Caddyfile <<EOF`) and captures its marker.
var docHeredocStart = regexp.MustCompile(`>\s*Caddyfile\s*<<-?\s*'?(\w+)'?\s*$`)

// docHeredocs splits a shell block into the Caddyfiles its here-documents
// write and the rest of the script, where their lines are left empty.
func docHeredocs(script string) (caddyfiles []string, rest string) {
	var out, doc []string
	marker := ""
	for _, line := range strings.Split(script, "\n") {
		switch {
		case marker != "" && strings.TrimSpace(line) == marker:
			caddyfiles = append(caddyfiles, strings.Join(doc, "\n")+"\n")
			marker, doc = "", nil
			out = append(out, "")
		case marker != "":
			doc = append(doc, line)
			out = append(out, "") // keeps the script's line numbers
		default:
			if m := docHeredocStart.FindStringSubmatch(line); m != nil {
				marker = m[1]
			}
			out = append(out, line)
		}
	}
	if marker != "" { // never closed: the shell would read to the end
		caddyfiles = append(caddyfiles, strings.Join(doc, "\n")+"\n")
	}
	return caddyfiles, strings.Join(out, "\n")
}

// docShellVar matches a shell variable in a here-document.
var docShellVar = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

// TestDocsShellExamples adapts the Caddyfiles that shell examples write
// and parses their `caddy ws-to-tcp` command lines.
func TestDocsShellExamples(t *testing.T) {
	standIns := docStandIns(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("choose a password"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	shellVars := map[string]string{"HASH": string(hash)}
	heredocs, commands := 0, 0
	for _, b := range docAllBlocks(t) {
		if b.lang != "sh" {
			continue
		}
		caddyfiles, script := docHeredocs(b.text)
		for _, doc := range caddyfiles {
			heredocs++
			cfg := docShellVar.ReplaceAllStringFunc(doc, func(v string) string {
				name := docShellVar.FindStringSubmatch(v)[1]
				if val, ok := shellVars[name]; ok {
					return val
				}
				t.Errorf("%s: the Caddyfile uses $%s, which the test does not know: add it to shellVars", b.where(), name)
				return v
			})
			if _, err := docAdapt(b.where(), cfg); err != nil {
				t.Errorf("%s: the Caddyfile written here does not adapt: %v\n%s", b.where(), err, numbered(cfg))
			}
		}
		for i, line := range strings.Split(script, "\n") {
			if c := strings.Index(line, " #"); c >= 0 {
				line = line[:c]
			}
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "caddy" || f[1] != "ws-to-tcp" {
				continue
			}
			commands++
			args := f[2:]
			for j, a := range args {
				if local, ok := standIns[a]; ok {
					args[j] = local
				}
			}
			if err := docParseCommand(args); err != nil {
				t.Errorf("%s:%d: %s: %v", b.file, b.line+1+i, strings.Join(f, " "), err)
			}
		}
	}
	if !t.Failed() && (heredocs < 1 || commands < 7) {
		t.Errorf("found %d Caddyfile here-documents and %d commands; the docs have more", heredocs, commands)
	}
}

// docParseCommand runs the flag parsing and configuration building of
// `caddy ws-to-tcp args...`, without running it.
func docParseCommand(args []string) error {
	cmd := &cobra.Command{Use: "ws-to-tcp"}
	wsToTCPCobra(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		return err
	}
	if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
		return err
	}
	_, _, err := wsToTCPConfig(caddycmd.Flags{FlagSet: cmd.Flags()})
	return err
}

// docSyntaxNames returns the subdirectives the grammar block names: the
// top-level ones (one tab deep) and all of them, nested ones included.
func docSyntaxNames(t *testing.T, b docBlock) (top, all []string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(b.text))
	for sc.Scan() {
		line := sc.Text()
		depth := len(line) - len(strings.TrimLeft(line, "\t"))
		f := strings.Fields(line)
		if depth == 0 || len(f) == 0 || f[0] == "}" || strings.HasPrefix(f[0], "<") {
			continue
		}
		all = append(all, f[0])
		if depth == 1 {
			top = append(top, f[0])
		}
	}
	return top, all
}

// TestDocsSyntaxBlock checks the directive's grammar in docs/caddyfile.md
// against the parser and the rest of the documentation: every
// subdirective it names is one the parser knows, has a row in the
// reference's table and in the README's summary, and every name, nested
// ones included, is described somewhere in the docs.
func TestDocsSyntaxBlock(t *testing.T) {
	var syntax []docBlock
	for _, b := range docBlocksOf(t, "docs/caddyfile.md") {
		if b.lang == "caddyfile" && b.role == "syntax" {
			syntax = append(syntax, b)
		}
	}
	if len(syntax) != 1 {
		t.Fatalf("docs/caddyfile.md has %d caddyfile syntax blocks, want 1", len(syntax))
	}
	top, all := docSyntaxNames(t, syntax[0])
	if len(top) < 30 {
		t.Fatalf("the grammar names %d subdirectives: is its parsing broken?\n%s", len(top), syntax[0].text)
	}

	// The parser knows each name: given without its arguments, it may
	// refuse the line, but not as an unknown subdirective. A made-up name
	// shows what that refusal looks like.
	unknown := func(name string) bool {
		_, err := docAdapt("Caddyfile", "http://example.com {\n\tws_to_tcp localhost:5900 {\n\t\t"+name+"\n\t}\n}\n")
		return err != nil && strings.Contains(err.Error(), "unrecognized")
	}
	if !unknown("no_such_subdirective") {
		t.Fatal(`an unknown subdirective is no longer refused as "unrecognized": update this test`)
	}
	for _, name := range top {
		if unknown(name) {
			t.Errorf("%s: the grammar names %q, which the parser does not know", syntax[0].where(), name)
		}
	}

	table := docTableFirstCells(t, "docs/caddyfile.md")
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var docs strings.Builder
	for _, f := range docFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs.Write(data)
	}
	for _, name := range top {
		if !strings.Contains(table, "`"+name+" ") && !strings.Contains(table, "`"+name+"`") {
			t.Errorf("docs/caddyfile.md: the subdirective table has no row for %q", name)
		}
		if !strings.Contains(string(readme), "`"+name+"`") {
			t.Errorf("README.md: the Caddyfile summary does not list %q", name)
		}
	}
	for _, name := range all {
		if !strings.Contains(docs.String(), "`"+name+" ") && !strings.Contains(docs.String(), "`"+name+"`") {
			t.Errorf("%q is in the grammar but described nowhere in the docs", name)
		}
	}
}

// docTableFirstCells returns the first cells of the table rows of file,
// one a line.
func docTableFirstCells(t *testing.T, file string) string {
	t.Helper()
	var b strings.Builder
	for _, line := range docLines(t, file) {
		if !strings.HasPrefix(line, "| ") {
			continue
		}
		cells := strings.SplitN(line[2:], " | ", 2)
		b.WriteString(cells[0] + "\n")
	}
	return b.String()
}

// docCaddyfileLooking matches a line that belongs in a Caddyfile: the
// opening of a global options block, a site address or a directive opening
// a block, a ws_to_tcp directive, or a common directive indented with tabs
// as in a site block.
var docCaddyfileLooking = regexp.MustCompile(`^(\{|\s*ws_to_tcp\b.*|\s*(https?://\S*|:\d+|[a-z0-9.-]+\.[a-z]{2,}|handle\S*|route|log|basic_auth|reverse_proxy)( [^{]*)? \{|\t+(handle\S*|route|respond|root|file_server|reverse_proxy|basic_auth|forward_auth|admin|metrics|log|encode|header|tls|bind|events)\b.*)$`)

// TestDocsFences checks that every code block names a language the tests
// know, and that no Caddyfile hides in a block of another language (where
// it would not be adapted).
func TestDocsFences(t *testing.T) {
	known := map[string]bool{"caddyfile": true, "json": true, "sh": true, "js": true, "yaml": true}
	for _, b := range docAllBlocks(t) {
		if !known[b.lang] {
			t.Errorf("%s: code block with language %q: give it one of caddyfile, json, sh, js, yaml (see docs_test.go)", b.where(), b.lang)
			continue
		}
		if b.lang == "caddyfile" || b.lang == "json" {
			continue
		}
		_, text := docHeredocs(b.text)
		for i, line := range strings.Split(text, "\n") {
			if docCaddyfileLooking.MatchString(line) {
				t.Errorf("%s: line %d of this %s block looks like a Caddyfile (%q): make it a caddyfile block, which is adapted", b.where(), i+1, b.lang, line)
				break
			}
		}
	}
}

// docLink matches a Markdown link's target.
var docLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// docCodeSpan matches inline code, whose brackets are no links.
var docCodeSpan = regexp.MustCompile("`[^`]*`")

// docSlug is GitHub's anchor for a heading: lower case, punctuation
// other than '-' and '_' dropped, spaces made hyphens.
func docSlug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// docAnchors returns the anchors of file's headings.
func docAnchors(t *testing.T, file string) map[string]bool {
	t.Helper()
	anchors := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range docLines(t, file) {
		if strings.HasPrefix(strings.TrimLeft(line, " \t"), "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		slug := docSlug(text)
		if n := seen[slug]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	}
	return anchors
}

// TestDocsLinks checks that every relative link of the documentation leads
// to a file of the repository and, with a #fragment, to one of its
// headings.
func TestDocsLinks(t *testing.T) {
	links := 0
	for _, file := range docFiles(t) {
		inFence := false
		for i, line := range docLines(t, file) {
			if strings.HasPrefix(strings.TrimLeft(line, " \t"), "```") {
				inFence = !inFence
				continue
			}
			if inFence {
				continue
			}
			for _, m := range docLink.FindAllStringSubmatch(docCodeSpan.ReplaceAllString(line, ""), -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				links++
				where := fmt.Sprintf("%s:%d", file, i+1)
				path, frag, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.ToSlash(filepath.Join(filepath.Dir(file), path))
				}
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s: link %q: %s does not exist", where, target, dest)
					continue
				}
				if frag == "" {
					continue
				}
				if !strings.HasSuffix(dest, ".md") {
					t.Errorf("%s: link %q: a #fragment in a file that is not Markdown", where, target)
					continue
				}
				if !docAnchors(t, dest)[frag] {
					t.Errorf("%s: link %q: %s has no heading with the anchor #%s", where, target, dest, frag)
				}
			}
		}
	}
	if !t.Failed() && links < 50 {
		t.Errorf("found %d relative links; the docs have more: is the link parsing broken?", links)
	}
}
