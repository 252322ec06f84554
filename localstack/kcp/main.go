// Command kcp is the local Kubernetes cluster used by the agentops-operator test
// suite and local stack: etcd, kube-apiserver, kube-controller-manager and, for the
// real node, kube-scheduler, kubelet and kube-proxy, built from the official
// Kubernetes Go modules into one busybox-style binary.
//
//	kcp etcd --data-dir DIR --client-url http://127.0.0.1:PORT --peer-url http://127.0.0.1:PORT
//	kcp kube-apiserver [kube-apiserver flags]
//	kcp kube-controller-manager [kube-controller-manager flags]
//	kcp kube-scheduler [kube-scheduler flags]
//	kcp kubelet [kubelet flags]
//	kcp kube-proxy [kube-proxy flags]
//
// Each component runs in its own process (the Python launcher in deploy/ starts
// them), because kube-apiserver and kube-controller-manager both register
// process-global metrics and flags and cannot share one address space.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kcp etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy [flags]")
		os.Exit(2)
	}
	component := os.Args[1]
	// Cobra reads os.Args[1:], so drop the component name before handing over.
	os.Args = append([]string{os.Args[0]}, os.Args[2:]...)
	switch component {
	case "etcd":
		os.Exit(runEtcd(os.Args[1:]))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(proxy.NewProxyCommand()))
	case "version":
		fmt.Println("kcp: kubernetes control plane for agentops-operator")
	default:
		fmt.Fprintf(os.Stderr, "kcp: unknown component %q (want etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet or kube-proxy)\n", component)
		os.Exit(2)
	}
}

func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "directory for etcd's data")
	clientURL := fs.String("client-url", "http://127.0.0.1:2379", "URL to serve clients on")
	peerURL := fs.String("peer-url", "http://127.0.0.1:2380", "URL to serve peers on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "kcp etcd: --data-dir is required")
		return 2
	}
	cu, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kcp etcd: bad --client-url: %v\n", err)
		return 2
	}
	pu, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kcp etcd: bad --peer-url: %v\n", err)
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Name = "kcp"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	// A throwaway single-member cluster for tests and local development:
	// fsync buys durability we do not need and costs most of etcd's latency.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kcp etcd: %v\n", err)
		return 1
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "kcp etcd: ready on %s\n", cu)
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "kcp etcd: not ready after 60s")
		return 1
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
		return 0
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "kcp etcd: %v\n", err)
		return 1
	}
}
