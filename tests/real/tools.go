//go:build tools

// Package tools pins the Kubernetes control-plane binaries the real-apiserver tests build from the Go
// module proxy: `go build k8s.io/kubernetes/cmd/kube-apiserver` resolves through this module's go.mod.
package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
