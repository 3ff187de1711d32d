package wstotcp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// fileSource is a token file in websockify's format (`token: target` per
// line, `#` comments), or a directory of such files. It is read when the
// config loads and again when it changes, checked at most once a second
// by the lookups: the one lookup that checks re-reads it, the others go
// on with the table they have.
type fileSource struct {
	path   string
	logger *zap.Logger
	now    func() time.Time // tests replace it

	table     atomic.Pointer[map[string]target]
	lastCheck atomic.Int64 // unix nanoseconds of the last check
	checking  atomic.Bool  // one lookup checks at a time

	// guarded by checking
	sig     string
	lastErr string
}

// fileCheckInterval is how often, at most, the file is looked at.
const fileCheckInterval = time.Second

// maxTokenFileSize bounds what is read of one token file.
const maxTokenFileSize = 16 << 20

func newFileSource(path string, logger *zap.Logger) (*fileSource, error) {
	fs := &fileSource{path: path, logger: logger, now: time.Now}
	sig, err := fs.signature()
	if err != nil {
		return nil, err
	}
	table, err := fs.load()
	if err != nil {
		return nil, err
	}
	fs.sig = sig
	fs.table.Store(&table)
	fs.lastCheck.Store(fs.now().UnixNano())
	return fs, nil
}

func (fs *fileSource) lookup(tok string) (target, bool) {
	fs.maybeReload()
	t, ok := (*fs.table.Load())[tok]
	return t, ok
}

// maybeReload re-reads the file if it changed, when it was last checked
// a second ago or more and no other lookup is checking it.
func (fs *fileSource) maybeReload() {
	now := fs.now()
	if now.UnixNano()-fs.lastCheck.Load() < int64(fileCheckInterval) {
		return
	}
	if !fs.checking.CompareAndSwap(false, true) {
		return
	}
	defer fs.checking.Store(false)
	fs.lastCheck.Store(now.UnixNano())
	sig, err := fs.signature()
	if err == nil && sig == fs.sig {
		return
	}
	var table map[string]target
	if err == nil {
		table, err = fs.load()
	}
	if err != nil {
		// keep the last good table; say so once per distinct error
		if msg := err.Error(); msg != fs.lastErr {
			fs.lastErr = msg
			fs.logger.Error("targets: cannot read the token file; the previous table stays in use",
				zap.String("file", fs.path), zap.Error(err))
		}
		return
	}
	fs.sig, fs.lastErr = sig, ""
	fs.table.Store(&table)
	fs.logger.Info("targets: token file reloaded", zap.String("file", fs.path), zap.Int("tokens", len(table)))
}

// files lists the token files: the path itself, or a directory's regular
// files whose names do not start with a dot, in name order.
func (fs *fileSource) files() ([]string, os.FileInfo, error) {
	fi, err := os.Stat(fs.path)
	if err != nil {
		return nil, nil, err
	}
	if !fi.IsDir() {
		return []string{fs.path}, fi, nil
	}
	entries, err := os.ReadDir(fs.path)
	if err != nil {
		return nil, nil, err
	}
	var list []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(fs.path, e.Name())
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			list = append(list, p)
		}
	}
	sort.Strings(list)
	return list, fi, nil
}

// signature changes when the file (or a file of the directory, or the
// directory's list of files) is modified.
func (fs *fileSource) signature() (string, error) {
	list, fi, err := fs.files()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d;", fi.ModTime().UnixNano())
	for _, p := range list {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s\x00%d\x00%d;", p, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

// load reads every token file into a table; on duplicates the last line
// wins. Lines that are not `token: target` are skipped with a warning
// naming the file and line, never the line itself (it holds a token).
func (fs *fileSource) load() (map[string]target, error) {
	list, _, err := fs.files()
	if err != nil {
		return nil, err
	}
	table := make(map[string]target)
	for _, p := range list {
		if err := fs.loadFile(p, table); err != nil {
			return nil, err
		}
	}
	return table, nil
}

func (fs *fileSource) loadFile(p string, table map[string]target) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFileSize+1))
	if err != nil {
		return err
	}
	if len(data) > maxTokenFileSize {
		return fmt.Errorf("%s: larger than %d MiB", p, maxTokenFileSize>>20)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), maxTokenFileSize)
	for n := 1; sc.Scan(); n++ {
		tok, t, err := parseTokenLine(sc.Text())
		if errors.Is(err, errBlankLine) {
			continue
		}
		if err != nil {
			fs.logger.Warn("targets: token file line skipped",
				zap.String("file", p), zap.Int("line", n), zap.String("problem", err.Error()))
			continue
		}
		table[tok] = t
	}
	return sc.Err()
}

var errBlankLine = errors.New("blank or comment line")

// parseTokenLine parses `token: target` (websockify splits at a colon
// followed by white space). Its errors do not quote the line.
func parseTokenLine(line string) (string, target, error) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return "", target{}, errBlankLine
	}
	i := strings.IndexFunc(line, func(r rune) bool { return r == ':' })
	for i >= 0 && (i+1 >= len(line) || (line[i+1] != ' ' && line[i+1] != '\t')) {
		j := strings.IndexByte(line[i+1:], ':')
		if j < 0 {
			i = -1
			break
		}
		i += 1 + j
	}
	if i <= 0 {
		return "", target{}, errors.New(`not "token: target" (a colon and a space after the token)`)
	}
	tok := strings.TrimSpace(line[:i])
	t, err := parseTargetValue(line[i+1:])
	if err != nil {
		return "", target{}, fmt.Errorf("the target is not host:port, unix_socket:/path, unix//path or JSON: %v", err)
	}
	return tok, t, nil
}
