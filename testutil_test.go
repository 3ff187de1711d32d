package wstotcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/crypto/bcrypt"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

func bcryptHash(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// provisioned returns a Handler from its JSON, provisioned.
func provisioned(t testing.TB, js string) *Handler {
	t.Helper()
	h := new(Handler)
	if err := json.Unmarshal([]byte(js), h); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// handlerErrorStatus is the HTTP status of a handler's error, 0 for none.
func handlerErrorStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

// The handler tier: a Handler without Caddy.

// handlerServer serves one provisioned Handler without Caddy: net/http's
// server on a loopback port, each request prepared as Caddy's server
// prepares it (caddyhttp.PrepareRequest, as reverse_proxy's own tests do),
// a handler error answered with its status, and a request the handler
// passes on answered 200 "next handler". Such tests run in parallel.
type handlerServer struct {
	wsEndpoint
	h *Handler
}

// nextHandlerBody is what the next handler answers.
const nextHandlerBody = "next handler"

// serveHandler serves h until the test ends; then it waits for h's
// tunnels to end (the test has closed its clients) and cleans h up, as
// an unload would.
func serveHandler(t testing.TB, h *Handler) *handlerServer {
	t.Helper()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Length", fmt.Sprint(len(nextHandlerBody)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write([]byte(nextHandlerBody))
		}
		return nil
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repl := caddy.NewReplacer()
		r = caddyhttp.PrepareRequest(r, repl, w, &caddyhttp.Server{})
		if err := h.ServeHTTP(w, r, next); err != nil {
			status := handlerErrorStatus(err)
			if status == 0 {
				status = http.StatusInternalServerError
			}
			w.WriteHeader(status)
		}
	}))
	hs := &handlerServer{wsEndpoint: wsEndpoint{t: t, host: strings.TrimPrefix(srv.URL, "http://")}, h: h}
	t.Cleanup(func() {
		srv.Close()
		if !within(ioTimeout/3, func() bool { return handlerTunnels(h) == 0 }) {
			n := handlerTunnels(h)
			t.Errorf("leak: %d tunnels of the handler still registered", n)
			// end them, so that the cleanups that wait for their
			// upstreams end too
			closeTunnels(h, wsframe.CloseGoingAway, "test over")
		}
		h.Cleanup()
	})
	return hs
}

// serveJSON provisions a handler from its JSON and serves it.
func serveJSON(t testing.TB, js string) *handlerServer {
	t.Helper()
	return serveHandler(t, provisioned(t, js))
}

// handlerTunnels counts the registered tunnels of h.
func handlerTunnels(h *Handler) int {
	tunnels.Lock()
	defer tunnels.Unlock()
	n := 0
	for _, t := range tunnels.m {
		if t.h == h {
			n++
		}
	}
	return n
}

// inCI reports whether the tests run in CI (CI set, and not false or 0),
// where .ci/run installs every tool and frees every port the tests need.
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "false" && v != "0"
}

// unavailable skips a test whose third-party program or fixed port is not
// available, outside CI; in CI it fails: a skipped end-to-end test must
// never pass for a run that claims them.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
