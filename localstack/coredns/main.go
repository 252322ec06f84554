// Command coredns is the local cluster's DNS server: CoreDNS built from its Go module with only
// the plugins a cluster DNS uses, so the image holds one small static binary and nothing that
// the local cluster cannot run (no cloud DNS back ends, no pulled image).
//
// It takes the upstream binary's flags and Corefile unchanged:
//
//	coredns -conf /etc/coredns/Corefile
//	coredns -version
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins of a cluster DNS Corefile. forward is there so that a stock kubeadm Corefile
	// (`forward . /etc/resolv.conf`) parses; on this machine it has nowhere to go but loopback.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// directives is upstream's plugin.cfg order restricted to the plugins above: a plugin sees a
// query only after every plugin listed before it, so the relative order must stay upstream's.
// A Corefile naming any other plugin fails to parse with "unknown directive".
var directives = []string{
	"reload",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"hosts",
	"kubernetes",
	"loop",
	"forward",
	"whoami",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
