package wstotcp

// Throttle caps a tunnel's bandwidth, each way. Rates are in bytes per
// second; the Caddyfile also takes bits per second (`512kbps`, `10Mbps`,
// `1Gbps`) and bytes per second with units (`2MiB/s`).
type Throttle struct {
	// Client to upstream, in bytes per second. Default: 0, no cap.
	Read int64 `json:"read,omitempty"`

	// Upstream to client, in bytes per second. Default: 0, no cap.
	Write int64 `json:"write,omitempty"`

	// The most bytes sent at once after a pause, in bytes. Default: a
	// quarter of a second at the rate, at least 512 bytes and at most
	// buffer_size.
	Burst int64 `json:"burst,omitempty"`
}
