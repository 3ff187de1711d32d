// Package testnet picks free loopback ports for the tests that must name a
// port before a server binds it: Caddy's sites and admin endpoint, the
// command's --listen, redis-server, nginx. It is imported by tests only.
package testnet

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
)

// FreePorts returns n distinct ports that were free a moment ago.
//
// They are picked at random below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), which the kernel never hands out by
// itself: a port picked there stays free until the test binds it, unless
// another test picks it too — the tests of several processes run at once
// (the root package's shards, the packages of `go test ./...`), and
// withFreePorts-style callers try again on "address already in use". A
// port of the ephemeral range, closed, may at once become the local port
// of any outgoing connection, or of another test's listener on port 0.
//
// Each port is held (bound on every interface) until all are picked, so
// that the n are distinct.
func FreePorts(n int) ([]int, error) {
	lo, hi := pickRange()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries == 1000 {
			return nil, fmt.Errorf("no free port in %d-%d after %d tries", lo, hi-1, tries)
		}
		p := lo + rand.IntN(hi-lo)
		if slices.Contains(ports, p) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, p)
	}
	return ports, nil
}

// pickRange is the upper half of the ports below the ephemeral range:
// clear of the well-known ports of local services (2019, 5432, 6379,
// 8080…).
func pickRange() (lo, hi int) {
	hi = 32768 // Linux's default start of the ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var first, last int
		if _, err := fmt.Sscan(string(b), &first, &last); err == nil && first > 2048 {
			hi = first
		}
	}
	return hi / 2, hi
}
