package wstotcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// allowList is the compiled form of allow_targets: which dynamic targets
// (from `targets` or from placeholders in `to`) may be dialled.
//
// Rules are of three kinds:
//
//   - address rules, `<ip or cidr>[:<ports>]` (`10.0.0.0/8:5900-5999`,
//     `127.0.0.1:5900`, `[::1]:5901`, `[fd00::/8]:5900`): a target is
//     checked by its IP address. A host name is resolved once, every
//     address it resolves to must be inside an address rule with the port,
//     and the first of them is dialled: the IP that was checked, never the
//     name again, so a DNS answer that changes between the check and the
//     dial (DNS rebinding) cannot lead anywhere else.
//   - name rules, `<host glob>[:<ports>]` (`*.vnc.internal:5900`,
//     `localhost:5900`): the name as the target gives it, case-insensitive,
//     where `*` stands for one or more characters within one label. A name
//     rule trusts the DNS answers for the names it matches: use it for zones
//     you control. The name is still resolved once and the checked address
//     dialled, and addresses that are never meant as targets (unspecified,
//     multicast, link-local such as a cloud metadata endpoint 169.254.x.x)
//     are refused unless an address rule allows them. Name rules never match
//     IP literals.
//   - socket rules, `unix/<path glob>` (`unix//run/vnc/*.sock`): `*` does not
//     match `/`; socket paths must be absolute and clean (no `..`).
//
// `<ports>` is a port, a range `lo-hi`, or `*`; without it any port matches.
type allowList struct {
	addrs   []addrRule
	names   []nameRule
	sockets []string // path.Match patterns, without the unix/ prefix

	// lookup resolves a host name; net.DefaultResolver by default (tests
	// replace it).
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

type portRange struct{ lo, hi uint16 }

func (p portRange) contains(port uint16) bool { return port >= p.lo && port <= p.hi }

var anyPort = portRange{1, 65535}

type addrRule struct {
	prefix netip.Prefix
	ports  portRange
}

type nameRule struct {
	glob  *regexp.Regexp // matches the lower-case name
	ports portRange
}

// errNotAllowed marks a target outside allow_targets (403).
var errNotAllowed = errors.New("not allowed by allow_targets")

func defaultLookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// compileAllowList parses allow_targets patterns. Its errors name the
// pattern at fault.
func compileAllowList(patterns []string) (*allowList, error) {
	a := &allowList{lookup: defaultLookupIP}
	for _, p := range patterns {
		if err := a.add(strings.TrimSpace(p)); err != nil {
			return nil, fmt.Errorf("%q: %v", p, err)
		}
	}
	return a, nil
}

func (a *allowList) add(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	if rest, ok := strings.CutPrefix(p, "unix/"); ok {
		if !strings.HasPrefix(rest, "/") {
			return errors.New("a socket pattern is unix/ followed by an absolute path glob, e.g. unix//run/vnc/*.sock")
		}
		if _, err := path.Match(rest, ""); err != nil {
			return fmt.Errorf("bad path glob: %v", err)
		}
		a.sockets = append(a.sockets, rest)
		return nil
	}
	if strings.Contains(p, "://") || strings.HasPrefix(p, "tcp/") || strings.HasPrefix(p, "tls/") {
		return errors.New("write <cidr|ip|host glob>[:<port or lo-hi>], or unix/<path glob>")
	}
	// An IP address or prefix alone, IPv6 ones without brackets included:
	// any port.
	if pr, ok := parseIPOrPrefix(p); ok {
		a.addrs = append(a.addrs, addrRule{pr, anyPort})
		return nil
	}
	host, ports := p, ""
	if strings.HasPrefix(p, "[") {
		end := strings.IndexByte(p, ']')
		if end < 0 {
			return errors.New("missing ]")
		}
		host = p[1:end]
		switch rest := p[end+1:]; {
		case rest == "":
		case strings.HasPrefix(rest, ":"):
			ports = rest[1:]
			if ports == "" {
				return errors.New("missing port after :")
			}
		default:
			return fmt.Errorf("unexpected %q after ]", rest)
		}
		if _, ok := parseIPOrPrefix(host); !ok {
			return fmt.Errorf("%q in brackets is not an IPv6 address or prefix", host)
		}
	} else if i := strings.LastIndexByte(p, ':'); i >= 0 {
		host, ports = p[:i], p[i+1:]
		if strings.Contains(host, ":") {
			return errors.New("put an IPv6 address or prefix with a port in brackets: [2001:db8::/32]:5900")
		}
		if ports == "" {
			return errors.New("missing port after :")
		}
	}
	pr, err := parsePorts(ports)
	if err != nil {
		return err
	}
	if prefix, ok := parseIPOrPrefix(host); ok {
		a.addrs = append(a.addrs, addrRule{prefix, pr})
		return nil
	}
	glob, err := parseHostGlob(host)
	if err != nil {
		return err
	}
	a.names = append(a.names, nameRule{glob, pr})
	return nil
}

// parseIPOrPrefix parses `10.1.2.3`, `10.0.0.0/8`, `::1`, `fd00::/8`; an
// address stands for its own /32 or /128. IPv4-mapped IPv6 forms are
// unmapped, zones refused.
func parseIPOrPrefix(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), true
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	return netip.PrefixFrom(addr, addr.BitLen()), true
}

// parsePorts parses "", "*", "5900" or "5900-5999".
func parsePorts(s string) (portRange, error) {
	if s == "" || s == "*" {
		return anyPort, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || l < 1 || h < l {
		return portRange{}, fmt.Errorf("%q is not a port (1-65535) or a range lo-hi", s)
	}
	return portRange{uint16(l), uint16(h)}, nil
}

// parseHostGlob checks a host name pattern and compiles it: `*` stands
// for one or more characters other than a dot.
func parseHostGlob(s string) (*regexp.Regexp, error) {
	s = strings.TrimSuffix(strings.ToLower(s), ".")
	if s == "" {
		return nil, errors.New("empty host")
	}
	var re strings.Builder
	re.WriteString("^")
	for i, l := range strings.Split(s, ".") {
		if l == "" {
			return nil, fmt.Errorf("%q is not a host name pattern (empty label)", s)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '*') {
				return nil, fmt.Errorf("%q is not an IP address, CIDR prefix or host name pattern", s)
			}
		}
		if i > 0 {
			re.WriteString(`\.`)
		}
		re.WriteString(strings.ReplaceAll(regexp.QuoteMeta(l), `\*`, `[^.]+`))
	}
	re.WriteString("$")
	return regexp.Compile(re.String())
}

func (r nameRule) match(host string, port uint16) bool {
	return r.ports.contains(port) && r.glob.MatchString(host)
}

// addrAllowed reports whether an address rule admits addr:port.
func (a *allowList) addrAllowed(addr netip.Addr, port uint16) bool {
	addr = addr.Unmap()
	if addr.Zone() != "" {
		return false
	}
	for _, r := range a.addrs {
		if r.ports.contains(port) && r.prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// neverByName reports addresses that a name rule alone does not admit.
func neverByName(addr netip.Addr) bool {
	return addr.IsUnspecified() || addr.IsMulticast() || addr.IsLinkLocalUnicast() ||
		addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast()
}

// errResolve marks a failure to resolve a target's host name (502, or 504
// on a timeout): the target may be allowed, it cannot be checked.
type errResolve struct{ err error }

func (e *errResolve) Error() string { return e.err.Error() }
func (e *errResolve) Unwrap() error { return e.err }

// checkSocket checks a Unix socket path.
func (a *allowList) checkSocket(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return fmt.Errorf("unix/%s: %w (socket paths must be absolute and clean)", p, errNotAllowed)
	}
	for _, g := range a.sockets {
		if ok, _ := path.Match(g, p); ok {
			return nil
		}
	}
	return fmt.Errorf("unix/%s: %w", p, errNotAllowed)
}

// checkHost checks host:port and returns the IP address to dial. A host
// name is resolved once (within ctx); see allowList for the rules.
func (a *allowList) checkHost(ctx context.Context, host string, port uint16) (netip.Addr, error) {
	shown := net.JoinHostPort(host, strconv.Itoa(int(port)))
	if addr, err := netip.ParseAddr(host); err == nil {
		if a.addrAllowed(addr, port) {
			return addr.Unmap(), nil
		}
		return netip.Addr{}, fmt.Errorf("%s: %w", shown, errNotAllowed)
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	byName := false
	for _, r := range a.names {
		if r.match(name, port) {
			byName = true
			break
		}
	}
	if !byName && len(a.addrs) == 0 {
		// nothing could admit it: no need to ask the DNS
		return netip.Addr{}, fmt.Errorf("%s: %w", shown, errNotAllowed)
	}
	addrs, err := a.lookup(ctx, name)
	if err != nil {
		return netip.Addr{}, &errResolve{fmt.Errorf("resolving %s: %w", host, err)}
	}
	if len(addrs) == 0 {
		return netip.Addr{}, &errResolve{fmt.Errorf("resolving %s: no address", host)}
	}
	for _, addr := range addrs {
		addr = addr.Unmap()
		if a.addrAllowed(addr, port) {
			continue
		}
		if byName && !neverByName(addr) && addr.Zone() == "" {
			continue
		}
		// one address outside is enough to refuse: the name is not
		// what the list means, whichever address a dial would pick
		return netip.Addr{}, fmt.Errorf("%s resolves to %s: %w", shown, addr, errNotAllowed)
	}
	return addrs[0].Unmap(), nil
}
