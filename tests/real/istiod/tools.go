//go:build tools

// Package istiod pins the istiod (pilot-discovery) the real-apiserver suite runs, so that
// `go build istio.io/istio/pilot/cmd/pilot-discovery` in this directory resolves from go.mod and go.sum.
package istiod

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
