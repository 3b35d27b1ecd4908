// Command informer runs the shared informers a remote istiod runs against a cluster, through whatever
// server its kubeconfig names (the proxy, in the tests), and reports what happens as JSON lines on
// stdout: one "synced" line per informer with its item count, then "add"/"update"/"delete" lines for
// changes, "watch_error" lines for every error a reflector sees, and a final "stopped" line.
//
// Like istiod it asks for protobuf (Accept: application/vnd.kubernetes.protobuf,application/json),
// sends protobuf bodies, runs at QPS 80 / burst 160, lists pods without Failed ones, reads the mesh
// config map by field selector and watches CRDs metadata-only.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

var out = json.NewEncoder(os.Stdout)
var outMu sync.Mutex

func emit(fields map[string]any) {
	outMu.Lock()
	defer outMu.Unlock()
	fields["time"] = time.Now().UTC().Format(time.RFC3339Nano)
	_ = out.Encode(fields)
}

type spec struct {
	name    string
	newInf  func() cache.SharedIndexInformer
	started bool
}

func listWatch(client rest.Interface, resource, fieldSelector string) *cache.ListWatch {
	return cache.NewFilteredListWatchFromClient(client, resource, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		if fieldSelector != "" {
			o.FieldSelector = fieldSelector
		}
	})
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig naming the server to read through")
	only := flag.String("informers", "", "comma-separated informers to run (default: all istiod runs)")
	secretsSelector := flag.String("secrets-field-selector", "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token", "istiod's gateway-credential informer selector")
	syncTimeout := flag.Duration("sync-timeout", 60*time.Second, "give up when informers have not synced by then")
	flag.Parse()

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		os.Exit(2)
	}
	cfg.QPS, cfg.Burst = 80, 160
	cfg.UserAgent = "apiproxy-informer-test"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(2)
	}
	metaClient, err := metadata.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "metadata client:", err)
		os.Exit(2)
	}
	core := client.CoreV1().RESTClient()
	specs := []*spec{
		{name: "namespaces", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(core, "namespaces", ""), &corev1.Namespace{}, 0, cache.Indexers{})
		}},
		{name: "pods", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(core, "pods", "status.phase!=Failed"), &corev1.Pod{}, 0, cache.Indexers{})
		}},
		{name: "services", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(core, "services", ""), &corev1.Service{}, 0, cache.Indexers{})
		}},
		{name: "nodes", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(core, "nodes", ""), &corev1.Node{}, 0, cache.Indexers{})
		}},
		{name: "endpointslices", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(client.DiscoveryV1().RESTClient(), "endpointslices", ""), &discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
		}},
		{name: "meshconfig", newInf: func() cache.SharedIndexInformer {
			lw := cache.NewFilteredListWatchFromClient(core, "configmaps", "istio-system", func(o *metav1.ListOptions) {
				o.FieldSelector = "metadata.name=istio"
			})
			return cache.NewSharedIndexInformer(lw, &corev1.ConfigMap{}, 0, cache.Indexers{})
		}},
		{name: "crds", newInf: func() cache.SharedIndexInformer {
			gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
			return metadatainformer.NewFilteredMetadataInformer(metaClient, gvr, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
		}},
		{name: "secrets", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(core, "secrets", *secretsSelector), &corev1.Secret{}, 0, cache.Indexers{})
		}},
		{name: "configmaps", newInf: func() cache.SharedIndexInformer {
			return cache.NewSharedIndexInformer(listWatch(core, "configmaps", ""), &corev1.ConfigMap{}, 0, cache.Indexers{})
		}},
	}
	wanted := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n != "" {
			wanted[n] = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var synced sync.Map
	running := map[string]cache.SharedIndexInformer{}
	for _, s := range specs {
		if len(wanted) > 0 && !wanted[s.name] {
			continue
		}
		name := s.name
		inf := s.newInf()
		_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			emit(map[string]any{"event": "watch_error", "informer": name, "error": err.Error()})
		})
		report := func(kind string, obj any) {
			if _, ok := synced.Load(name); !ok {
				return
			}
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			m, err := metaOf(obj)
			if err != nil {
				return
			}
			emit(map[string]any{"event": kind, "informer": name, "namespace": m.GetNamespace(), "name": m.GetName(), "resourceVersion": m.GetResourceVersion()})
		}
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { report("add", obj) },
			UpdateFunc: func(_, obj any) { report("update", obj) },
			DeleteFunc: func(obj any) { report("delete", obj) },
		})
		running[name] = inf
		go inf.Run(ctx.Done())
	}
	names := make([]string, 0, len(running))
	for n := range running {
		names = append(names, n)
	}
	sort.Strings(names)
	syncCtx, cancel := context.WithTimeout(ctx, *syncTimeout)
	defer cancel()
	failed := false
	for _, n := range names {
		inf := running[n]
		if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
			emit(map[string]any{"event": "sync_failed", "informer": n})
			failed = true
			continue
		}
		synced.Store(n, true)
		emit(map[string]any{"event": "synced", "informer": n, "items": len(inf.GetStore().ListKeys())})
	}
	if failed {
		os.Exit(1)
	}
	emit(map[string]any{"event": "all_synced", "informers": names})
	<-ctx.Done()
	emit(map[string]any{"event": "stopped"})
}

func metaOf(obj any) (metav1.Object, error) {
	if o, ok := obj.(metav1.Object); ok {
		return o, nil
	}
	if r, ok := obj.(runtime.Object); ok {
		return nil, fmt.Errorf("no metadata on %T", r)
	}
	return nil, fmt.Errorf("not an object: %T", obj)
}
