package cluster

import "testing"

// StartSecure is Start with cluster authentication: the broker's backend,
// the pubsub's frontend and every server's peer port accept only peers that
// present secret (ZMTP PLAIN), and the servers present it.
func StartSecure(t testing.TB, opt Options, secret string) *Cluster {
	t.Helper()
	opt.ClusterSecret = secret
	return Start(t, opt)
}

// Backend returns the broker's endpoint for servers.
func (c *Cluster) Backend() string { return c.backend }

// Publish returns the pubsub's endpoint for publishers.
func (c *Cluster) Publish() string { return c.publish }

// Peer returns server id's peer endpoint.
func (c *Cluster) Peer(id int) string { return c.peers[id] }
