package wstotcp

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestConnLimitsNil(t *testing.T) {
	if l := newConnLimits(0, 0, 0); l != nil {
		t.Fatalf("no limits: got %+v, want nil", l)
	}
	var l *connLimits
	rel, err := l.acquire("1.2.3.4")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	relU, err := l.acquireUser("alice")
	if err != nil {
		t.Fatal(err)
	}
	relU()
}

func TestConnLimitsCounts(t *testing.T) {
	l := newConnLimits(3, 2, 1)
	a1, err := l.acquire("a")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := l.acquire("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquire("a"); err == nil || !strings.Contains(err.Error(), "max_connections_per_ip 2") {
		t.Fatalf("third from a: %v, want the per-IP limit", err)
	}
	b1, err := l.acquire("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquire("c"); err == nil || !strings.Contains(err.Error(), "max_connections 3") {
		t.Fatalf("fourth: %v, want the total limit", err)
	}
	// a refused acquire takes nothing
	if total, perIP, _ := l.counts("a", ""); total != 3 || perIP != 2 {
		t.Fatalf("counts %d %d, want 3 2", total, perIP)
	}
	a1()
	a1() // idempotent
	if total, perIP, _ := l.counts("a", ""); total != 2 || perIP != 1 {
		t.Fatalf("after one release: %d %d, want 2 1", total, perIP)
	}
	a2()
	b1()
	if total, _, _ := l.counts("", ""); total != 0 || len(l.perIP) != 0 {
		t.Fatalf("after all releases: total %d, perIP %v", total, l.perIP)
	}

	u1, err := l.acquireUser("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquireUser("alice"); err == nil || !strings.Contains(err.Error(), "max_connections_per_user 1") {
		t.Fatalf("second for alice: %v", err)
	}
	if rel, err := l.acquireUser(""); err != nil {
		t.Fatalf("anonymous: %v", err)
	} else {
		rel()
	}
	u1()
	u1()
	if _, _, perUser := l.counts("", "alice"); perUser != 0 || len(l.perUser) != 0 {
		t.Fatalf("after release: %d %v", perUser, l.perUser)
	}
}

// TestConnLimitsConcurrent: goroutines hammering acquire and release
// never hold more slots than the limits.
func TestConnLimitsConcurrent(t *testing.T) {
	const total, perIP = 10, 4
	l := newConnLimits(total, perIP, 0)
	var held atomic.Int32
	var heldIP [3]atomic.Int32
	var maxHeld, maxIP atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := 0; g < 60; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ip := []string{"a", "b", "c"}[g%3]
			for i := 0; i < 200; i++ {
				rel, err := l.acquire(ip)
				if err != nil {
					continue
				}
				n := held.Add(1)
				k := heldIP[g%3].Add(1)
				for {
					m := maxHeld.Load()
					if n <= m || maxHeld.CompareAndSwap(m, n) {
						break
					}
				}
				for {
					m := maxIP.Load()
					if k <= m || maxIP.CompareAndSwap(m, k) {
						break
					}
				}
				heldIP[g%3].Add(-1)
				held.Add(-1)
				rel()
			}
		}()
	}
	close(start)
	wg.Wait()
	if maxHeld.Load() > total || maxIP.Load() > perIP {
		t.Fatalf("held at most %d (limit %d), per IP %d (limit %d)", maxHeld.Load(), total, maxIP.Load(), perIP)
	}
	if maxHeld.Load() == 0 {
		t.Fatal("nothing was ever admitted")
	}
	if tot, _, _ := l.counts("", ""); tot != 0 {
		t.Fatalf("%d slots left taken", tot)
	}
}
