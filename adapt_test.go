package wstotcp

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestAdapt adapts each testdata/caddyfile_adapt/*.caddytest Caddyfile and
// compares the result with the JSON below its "----------" line, as Caddy's
// own caddytest/integration/caddyfile_adapt_test.go does.
func TestAdapt(t *testing.T) {
	const dir = "testdata/caddyfile_adapt"
	files, err := filepath.Glob(filepath.Join(dir, "*.caddytest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no .caddytest files in %s", dir)
	}
	winNewlines := regexp.MustCompile(`\r?\n`)

	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".caddytest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(string(data), "----------")
			if len(parts) != 2 {
				t.Fatalf("%s: want one \"----------\" line between the Caddyfile and the JSON, found %d", name, len(parts)-1)
			}
			caddyfile := strings.TrimSpace(parts[0]) + "\n"
			expected := winNewlines.ReplaceAllString(strings.TrimSpace(parts[1]), "\n")
			if !strings.HasPrefix(expected, "{") {
				t.Fatalf("%s: the part after \"----------\" is not JSON", name)
			}

			// file_server hides the Caddyfile under an OS-specific path.
			replacePath, _ := json.Marshal(fmt.Sprint(".", string(filepath.Separator), "Caddyfile"))
			expected = strings.ReplaceAll(expected, `"./Caddyfile"`, string(replacePath))

			if !caddytest.CompareAdapt(t, name, caddyfile, "caddyfile", expected) {
				t.Errorf("%s: adapted JSON differs from the expected JSON (diff above)", name)
			}
		})
	}
}
