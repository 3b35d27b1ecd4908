// Command informer is a client-go client configured as Kubernetes' own components are (protobuf): it
// starts the Secret informer a remote istiod starts (all namespaces, istiod's field selector) and a
// cluster-wide ConfigMap informer, waits for both to sync, keeps them running, and reports as JSON lines
// whether they synced, with how many objects, whether they stayed synced, and the Content-Types of the
// answers it got (so a test can tell protobuf was spoken).
//
// Usage: informer KUBECONFIG SECONDS
package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const istiodSecretSelector = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"

// contentTypes records the Content-Type of every response.
type contentTypes struct {
	mu   sync.Mutex
	seen map[string]bool
	next http.RoundTripper
}

func (c *contentTypes) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err == nil {
		c.mu.Lock()
		c.seen[resp.Header.Get("Content-Type")] = true
		c.mu.Unlock()
	}
	return resp, err
}

func (c *contentTypes) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.seen))
	for t := range c.seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

type report struct {
	Phase             string   `json:"phase"`
	Synced            bool     `json:"synced"`
	Secrets           int      `json:"secrets"`
	ConfigMaps        int      `json:"configmaps"`
	Events            int64    `json:"events"`
	SecretsVersion    string   `json:"secretsVersion"`
	ConfigMapsVersion string   `json:"configmapsVersion"`
	ContentTypes      []string `json:"contentTypes"`
}

func main() {
	seconds, err := strconv.Atoi(os.Args[2])
	if err != nil {
		panic(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Args[1])
	if err != nil {
		panic(err)
	}
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	seen := &contentTypes{seen: map[string]bool{}}
	cfg.WrapTransport = func(next http.RoundTripper) http.RoundTripper { seen.next = next; return seen }
	client := kubernetes.NewForConfigOrDie(cfg)

	secretFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = istiodSecretSelector }))
	secrets := secretFactory.Core().V1().Secrets().Informer()
	configMapFactory := informers.NewSharedInformerFactory(client, 0)
	configMaps := configMapFactory.Core().V1().ConfigMaps().Informer()

	var events atomic.Int64
	count := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { events.Add(1) },
		UpdateFunc: func(any, any) { events.Add(1) },
		DeleteFunc: func(any) { events.Add(1) },
	}
	if _, err := secrets.AddEventHandler(count); err != nil {
		panic(err)
	}
	if _, err := configMaps.AddEventHandler(count); err != nil {
		panic(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	secretFactory.Start(ctx.Done())
	configMapFactory.Start(ctx.Done())

	out := json.NewEncoder(os.Stdout)
	state := func(phase string, synced bool) report {
		return report{
			Phase: phase, Synced: synced,
			Secrets: len(secrets.GetStore().List()), ConfigMaps: len(configMaps.GetStore().List()),
			Events: events.Load(), SecretsVersion: secrets.LastSyncResourceVersion(),
			ConfigMapsVersion: configMaps.LastSyncResourceVersion(), ContentTypes: seen.list(),
		}
	}

	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	synced := cache.WaitForCacheSync(syncCtx.Done(), secrets.HasSynced, configMaps.HasSynced)
	_ = out.Encode(state("synced", synced))
	if !synced {
		os.Exit(1)
	}

	stayed := true
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for time.Now().Before(deadline) {
		if !secrets.HasSynced() || !configMaps.HasSynced() || secrets.IsStopped() || configMaps.IsStopped() {
			stayed = false
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = out.Encode(state("done", stayed))
}
