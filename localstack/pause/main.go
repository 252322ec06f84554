// Command pause is the sandbox ("infra") container of every pod on the local node: it holds
// the pod's namespaces open, reaps the zombies of its PID namespace when it is the pod's init,
// and exits on SIGINT or SIGTERM.  The node cannot pull registry.k8s.io/pause, so it is built
// here from this file into an image FROM scratch (see localstack/images.py).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("agentops pause\n")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
