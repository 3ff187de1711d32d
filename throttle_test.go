package wstotcp

import (
	"testing"
)

func TestParseRate(t *testing.T) {
	t.Parallel()
	good := map[string]int64{
		"512kbps": 64000, "10Mbps": 1250000, "1Gbps": 125000000, "8bps": 1, "1mbps": 125000,
		"2MiB/s": 2 << 20, "64KiB/s": 64 << 10, "1GiB/s": 1 << 30, "1000B/s": 1000, "1.5MB/s": 1500000,
	}
	for in, want := range good {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "100", "Mbps", "-1Mbps", "0kbps", "1bps", "1e400Gbps", "NaNMbps", "1 furlong/s"} {
		if got, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) = %d, want an error", bad, got)
		}
	}
}
