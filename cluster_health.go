package wstotcp

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// Shared upstream health (README, Cluster): each instance publishes the
// list of upstream addresses that its own checks (active or passive) say
// are down, on the cluster's health channel, when that list changes and,
// while it is not empty, at every heartbeat (so that an instance that
// joins, or missed a message, learns it). An upstream that any live
// instance reports down is down everywhere; it comes back when no live
// instance reports it any more: recovery seen by the instance that saw the
// failure, or that instance's lease running out. Upstreams are matched by
// their address as written in the configuration.

// clusterHealth is what a node knows of the other instances' verdicts.
type clusterHealth struct {
	mu     sync.Mutex
	remote map[string]remoteHealth // by session
	sent   string                  // the list last published; sentAgain after an outage
}

// remoteHealth is one instance's last report.
type remoteHealth struct {
	instance string
	down     map[string]bool
}

// sentAgain is never a published list: after an outage the list is sent
// whatever it is.
const sentAgain = "\x00"

// healthMessage is published on <prefix>health.
type healthMessage struct {
	Session  string   `json:"session"`
	Instance string   `json:"instance"`
	Down     []string `json:"down"`
}

func (c *clusterHealth) resetSent() {
	c.mu.Lock()
	c.sent = sentAgain
	c.mu.Unlock()
}

// publishHealth sends this node's list of locally down upstreams when it
// changed, or (refresh) when it is not empty.
func (n *clusterNode) publishHealth(refresh bool) {
	if !n.started.Load() {
		return
	}
	down := n.localDown()
	joined := strings.Join(down, "\n")
	n.health.mu.Lock()
	send := joined != n.health.sent || refresh && len(down) > 0
	n.health.mu.Unlock()
	if !send {
		return
	}
	if down == nil {
		down = []string{}
	}
	err := n.publish(n.ctx, n.healthChannel(), healthMessage{Session: n.session, Instance: n.name, Down: down})
	if err != nil {
		if n.ctx.Err() == nil {
			n.setUp(false, err)
		}
		return
	}
	n.health.mu.Lock()
	n.health.sent = joined
	n.health.mu.Unlock()
}

// localDown lists the upstreams of the node's handlers that their own
// checks say are down, sorted.
func (n *clusterNode) localDown() []string {
	var down []string
	upstreamStates.Range(func(_, v any) bool {
		s := v.(*upstreamState)
		s.mu.Lock()
		mine := slices.ContainsFunc(s.owners, func(h *Handler) bool { return h.cluster != nil && h.cluster.node == n })
		if mine && !s.localHealthyLocked() {
			down = append(down, s.dial)
		}
		s.mu.Unlock()
		return true
	})
	slices.Sort(down)
	return down
}

// receiveHealth takes another instance's report.
func (n *clusterNode) receiveHealth(payload string) {
	var m healthMessage
	if err := json.Unmarshal([]byte(payload), &m); err != nil || m.Session == "" {
		n.logger.Debug("cluster: invalid health message", zap.Error(err))
		return
	}
	if m.Session == n.session {
		return
	}
	rh := remoteHealth{instance: m.Instance, down: make(map[string]bool, len(m.Down))}
	for _, d := range m.Down {
		rh.down[d] = true
	}
	n.health.mu.Lock()
	old := n.health.remote[m.Session]
	if len(rh.down) == 0 {
		delete(n.health.remote, m.Session)
	} else {
		n.health.remote[m.Session] = rh
	}
	n.health.mu.Unlock()
	applyClusterHealth(union(old.down, rh.down))
}

// pruneMembers forgets the reports of instances that are no longer live
// members.
func (c *clusterHealth) pruneMembers(n *clusterNode, members []string) {
	affected := map[string]bool{}
	c.mu.Lock()
	for s, rh := range c.remote {
		if !slices.Contains(members, s) {
			delete(c.remote, s)
			for d := range rh.down {
				affected[d] = true
			}
		}
	}
	c.mu.Unlock()
	applyClusterHealth(affected)
}

// forget drops every report of a stopped node.
func (c *clusterHealth) forget(n *clusterNode) {
	affected := map[string]bool{}
	c.mu.Lock()
	for s, rh := range c.remote {
		delete(c.remote, s)
		for d := range rh.down {
			affected[d] = true
		}
	}
	c.mu.Unlock()
	applyClusterHealth(affected)
}

func union(a, b map[string]bool) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// applyClusterHealth updates the verdicts of the upstreams whose reports
// changed.
func applyClusterHealth(addrs map[string]bool) {
	if len(addrs) == 0 {
		return
	}
	var states []*upstreamState
	upstreamStates.Range(func(_, v any) bool {
		if s := v.(*upstreamState); addrs[s.dial] {
			states = append(states, s)
		}
		return true
	})
	for _, s := range states {
		by := clusterDownBy(s.dial)
		s.update(func() string {
			s.clusterDown = by != ""
			if by != "" {
				return "reported down by cluster instance " + by
			}
			return "no cluster instance reports it down any more"
		})
	}
}

// clusterDownBy names the instances, of every cluster of the process, that
// report the upstream down ("" for none).
func clusterDownBy(dial string) string {
	clusterNodes.Lock()
	nodes := make([]*clusterNode, 0, len(clusterNodes.m))
	for _, n := range clusterNodes.m {
		nodes = append(nodes, n)
	}
	clusterNodes.Unlock()
	var by []string
	for _, n := range nodes {
		n.health.mu.Lock()
		for _, rh := range n.health.remote {
			if rh.down[dial] {
				by = append(by, rh.instance)
			}
		}
		n.health.mu.Unlock()
	}
	slices.Sort(by)
	return strings.Join(slices.Compact(by), ", ")
}

// kickClusterNodes tells the nodes that a local verdict changed.
func kickClusterNodes() {
	clusterNodes.Lock()
	defer clusterNodes.Unlock()
	for _, n := range clusterNodes.m {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}
