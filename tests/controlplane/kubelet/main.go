// Command kubelet is the test kubelet of Portico's conformance harness: it makes the pods of
// the test control plane real processes, one network namespace per pod, so that Deployments
// (the conformance suite's echo backends, Portico's controller and the dataplanes it
// provisions) run as they would on a node.
//
//   - One Node, Ready, its Lease renewed. Pods without a node are bound to it (there is no
//     scheduler); a pod whose image is not in the image table stays Pending with an Event.
//   - Each pod gets a network namespace with a veth on the bridge ptkbr0 (198.19.0.1/16) and
//     an address from 198.19.0.0/16, the half of RFC 2544's 198.18.0.0/15 the other tests do
//     not use. Its containers run there as processes; Secret, ConfigMap, downward API,
//     emptyDir and projected ServiceAccount-token volumes are files in the pod's directory.
//     Mount paths under /run (the ServiceAccount token kube clients read) are bind-mounted
//     in a mount namespace of the pod's own; other mount paths are rewritten in the
//     container's args and env. /etc/resolv.conf points at this kubelet's DNS.
//   - Status: phase, pod IPs, host IP, conditions and container statuses; readiness from
//     httpGet and tcpSocket probes; a container that exits is restarted (with back-off).
//   - Deletion: the processes get SIGTERM, then SIGKILL after the grace period (at most 10 s
//     here), and the pod is deleted with grace 0, so namespaces never stay Terminating.
//   - Services (a userspace service proxy, as kube-proxy's first mode was): each ClusterIP is
//     an address of the bridge with a TCP listener per port that forwards to a ready
//     endpoint, and a UDP socket per UDP port that gives each client address a flow of its
//     own to one endpoint; `default/kubernetes` forwards to the API server. Each LoadBalancer Service
//     gets an address from 198.19.255.0/24 the same way, written to its status, so a
//     Gateway's address reaches its dataplane pods from the test process: the one its
//     spec.loadBalancerIP asks for when that is in the pool and free, none when it asks
//     for another (as a cloud load balancer that cannot grant it), else the lowest free.
//   - DNS on 198.19.0.1:53: `<service>.<namespace>.svc.cluster.local` → its ClusterIP.
//   - The kubelet port, 198.19.0.1:10250 (logs.go): container logs for `pods/log`, to the
//     API server's client certificate only.
//
// It touches nothing it did not create: the bridge, the namespaces and veths (prefix ptk),
// the addresses on the bridge; all removed on exit (SIGTERM, SIGINT, or its stdin closing),
// with every process it started. Needs root and iproute2.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

const (
	bridge    = "ptkbr0"
	nsPrefix  = "ptk-"
	vethHost  = "ptkv"
	domain    = "cluster.local"
	maxGrace  = 10 * time.Second
	probeWait = 1 * time.Second
)

var (
	nodeIP  = net.IPv4(198, 19, 0, 1)
	podMask = net.CIDRMask(16, 32)
)

type imageFlags map[string]string

func (f imageFlags) String() string { return fmt.Sprint(map[string]string(f)) }
func (f imageFlags) Set(v string) error {
	repo, bin, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("want REPOSITORY=BINARY, got %q", v)
	}
	f[repo] = bin
	return nil
}

type kubelet struct {
	client    kubernetes.Interface
	node      string
	dir       string
	images    imageFlags
	apiServer string // host:port of the API server, for the kubernetes Service
	port      int32  // the kubelet port (pods/log), 0 without one

	mu     sync.Mutex
	pods   map[types.UID]*podRun
	used   map[string]bool    // pod IPs in use
	failed map[types.UID]bool // pods whose start failed (reported once)
	nextIP uint32

	services *serviceProxy
	// retry syncs a pod again later (a volume's Secret that does not exist yet).
	retry func(key string)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig of the control plane")
	dir := flag.String("dir", "", "state directory (pod files and logs)")
	node := flag.String("node", "portico-test-node", "the Node's name")
	images := imageFlags{}
	flag.Var(images, "image", "REPOSITORY=BINARY: run BINARY for containers of this image (any tag); repeatable")
	dnsPod := flag.Bool("dns-pod", false, "run as the stand-in for the CoreDNS image: answer DNS on :53")
	var port kubeletPortFiles
	flag.StringVar(&port.cert, "tls-cert-file", "", "serving certificate of the kubelet port (IP SAN 198.19.0.1); without it, no kubelet port (no pods/log)")
	flag.StringVar(&port.key, "tls-private-key-file", "", "its key")
	flag.StringVar(&port.clientCA, "client-ca-file", "", "CA of the API server's kubelet client certificate")
	flag.Parse()
	if *dnsPod {
		serveDNS(":53", func(string) net.IP { return nil })
		select {}
	}
	if *kubeconfig == "" || *dir == "" {
		log.Fatal("kubelet: -kubeconfig and -dir are required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	if err := run(ctx, *kubeconfig, *dir, *node, images, port); err != nil {
		log.Printf("kubelet: %v", err)
		os.Exit(1)
	}
}

type kubeletPortFiles struct{ cert, key, clientCA string }

func run(ctx context.Context, kubeconfig, dir, node string, images imageFlags, port kubeletPortFiles) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 200, 400
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	host := strings.TrimPrefix(cfg.Host, "https://")
	removeNetwork()
	if err := setupNetwork(); err != nil {
		removeNetwork()
		return fmt.Errorf("network: %w", err)
	}
	k := &kubelet{
		client: client, node: node, dir: dir, images: images, apiServer: host,
		pods: map[types.UID]*podRun{}, used: map[string]bool{}, failed: map[types.UID]bool{}, nextIP: 2,
	}
	defer k.shutdown()
	if port.cert != "" {
		if port.key == "" || port.clientCA == "" {
			return fmt.Errorf("-tls-cert-file needs -tls-private-key-file and -client-ca-file")
		}
		if err := k.serveKubeletPort(ctx, port.cert, port.key, port.clientCA); err != nil {
			return fmt.Errorf("kubelet port: %w", err)
		}
		k.port = kubeletPort
	}
	if err := k.registerNode(ctx); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	pods := factory.Core().V1().Pods()
	k.services = newServiceProxy(k, factory)
	queue := make(chan string, 4096)
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue <- key
		}
	}
	_, _ = pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
		DeleteFunc: enqueue,
	})
	k.retry = func(key string) {
		time.AfterFunc(2*time.Second, func() { queue <- key })
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	go serveDNS(net.JoinHostPort(nodeIP.String(), "53"), k.services.resolve)
	log.Printf("kubelet: node %s ready on %s", node, nodeIP)
	fmt.Println("READY")
	for {
		select {
		case <-ctx.Done():
			return nil
		case key := <-queue:
			ns, name, _ := cache.SplitMetaNamespaceKey(key)
			pod, err := pods.Lister().Pods(ns).Get(name)
			if apierrors.IsNotFound(err) {
				k.forget(ns, name)
				continue
			}
			if err != nil {
				continue
			}
			k.sync(ctx, pod)
		}
	}
}

// ip runs iproute2.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func setupNetwork() error {
	if err := ip("link", "add", bridge, "type", "bridge"); err != nil {
		return err
	}
	if err := ip("addr", "add", nodeIP.String()+"/16", "dev", bridge); err != nil {
		return err
	}
	return ip("link", "set", bridge, "up")
}

// removeNetwork deletes the bridge and every namespace this kubelet (or a previous one that
// died) made.
func removeNetwork() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			_ = ip("netns", "del", f[0])
		}
	}
	_ = ip("link", "del", bridge)
}

func (k *kubelet) shutdown() {
	k.mu.Lock()
	runs := make([]*podRun, 0, len(k.pods))
	for _, r := range k.pods {
		runs = append(runs, r)
	}
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() { defer wg.Done(); r.stop(2 * time.Second) }()
	}
	wg.Wait()
	k.services.close()
	removeNetwork()
}

// --- the Node -----------------------------------------------------------------------------

func (k *kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: k.node, Labels: map[string]string{
			"kubernetes.io/hostname": k.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		}},
	}
	if _, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := k.nodeStatus(ctx); err != nil {
		return err
	}
	go func() {
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			k.renewLease(ctx)
			if n%4 == 3 {
				_ = k.nodeStatus(ctx)
			}
		}
	}()
	k.renewLease(ctx)
	return nil
}

func (k *kubelet) nodeStatus(ctx context.Context) error {
	node, err := k.client.CoreV1().Nodes().Get(ctx, k.node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("1000"),
	}
	node.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "the test kubelet is running", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: nodeIP.String()},
			{Type: corev1.NodeHostName, Address: k.node},
		},
		NodeInfo:        corev1.NodeSystemInfo{KubeletVersion: "v1.36.0-portico-test", OperatingSystem: "linux", Architecture: "amd64"},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: k.port}},
	}
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func (k *kubelet) renewLease(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, k.node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, _ = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.node},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To(k.node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now,
			},
		}, metav1.CreateOptions{})
		return
	}
	if err != nil {
		return
	}
	lease.Spec.RenewTime = &now
	_, _ = leases.Update(ctx, lease, metav1.UpdateOptions{})
}

// --- pods ---------------------------------------------------------------------------------

// binary is the process a container of `image` becomes, if the table has it.
func (k *kubelet) binary(image string) (string, bool) {
	repo := image
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	bin, ok := k.images[repo]
	return bin, ok
}

func (k *kubelet) sync(ctx context.Context, pod *corev1.Pod) {
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp != nil {
			_ = k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, *metav1.NewDeleteOptions(0))
			return
		}
		for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
			if _, ok := k.binary(c.Image); !ok {
				k.event(ctx, pod, "Warning", "UnknownImage",
					fmt.Sprintf("the test kubelet has no process for image %q (container %s)", c.Image, c.Name))
				return
			}
		}
		binding := &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.node},
		}
		if err := k.client.CoreV1().Pods(pod.Namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsConflict(err) {
			log.Printf("kubelet: bind %s/%s: %v", pod.Namespace, pod.Name, err)
		}
		return
	}
	if pod.Spec.NodeName != k.node {
		return
	}
	k.mu.Lock()
	r := k.pods[pod.UID]
	k.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		go k.terminate(ctx, pod, r)
		return
	}
	if r != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	r, err := k.start(ctx, pod)
	if err != nil {
		// As a kubelet does, try again: a Secret or ConfigMap a volume needs may come later.
		if !k.failed[pod.UID] {
			k.failed[pod.UID] = true
			log.Printf("kubelet: start %s/%s (retrying): %v", pod.Namespace, pod.Name, err)
			k.event(ctx, pod, "Warning", "FailedMount", err.Error())
		}
		k.retry(pod.Namespace + "/" + pod.Name)
		return
	}
	delete(k.failed, pod.UID)
	k.mu.Lock()
	k.pods[pod.UID] = r
	k.mu.Unlock()
}

func (k *kubelet) terminate(ctx context.Context, pod *corev1.Pod, r *podRun) {
	if r != nil {
		grace := maxGrace
		if g := pod.DeletionGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
			grace = time.Duration(*g) * time.Second
		}
		r.stop(grace)
		k.release(pod.UID, r)
	}
	opts := metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0), Preconditions: &metav1.Preconditions{UID: &pod.UID}}
	if err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.Printf("kubelet: delete %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// forget stops a pod that was deleted without us seeing its deletion timestamp.
func (k *kubelet) forget(ns, name string) {
	k.mu.Lock()
	var found []*podRun
	for uid, r := range k.pods {
		if r.namespace == ns && r.name == name {
			found = append(found, r)
			delete(k.pods, uid)
		}
	}
	k.mu.Unlock()
	for _, r := range found {
		go func() { r.stop(2 * time.Second); k.release("", r) }()
	}
}

func (k *kubelet) release(uid types.UID, r *podRun) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if uid != "" {
		delete(k.pods, uid)
	}
	delete(k.used, r.ip.String())
}

func (k *kubelet) allocateIP() (net.IP, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := 0; i < 65000; i++ {
		n := k.nextIP
		k.nextIP++
		if k.nextIP >= 0xff00 { // 198.19.255.0/24 is for LoadBalancer addresses
			k.nextIP = 2
		}
		addr := net.IPv4(198, 19, byte(n>>8), byte(n))
		if n&0xff == 0 || n&0xff == 0xff || k.used[addr.String()] {
			continue
		}
		k.used[addr.String()] = true
		return addr, nil
	}
	return nil, fmt.Errorf("no pod address left")
}

func (k *kubelet) event(ctx context.Context, pod *corev1.Pod, kind, reason, message string) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + ".", Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, APIVersion: "v1",
		},
		Reason: reason, Message: message, Type: kind, Source: corev1.EventSource{Component: "kubelet", Host: k.node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	_, _ = k.client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{})
}

// podRun is one pod's namespace, files and processes.
type podRun struct {
	k         *kubelet
	namespace string
	name      string
	uid       types.UID
	netns     string
	ip        net.IP
	dir       string
	started   metav1.Time

	mu         sync.Mutex
	containers []*containerRun
	stopping   bool
	done       chan struct{}
}

type containerRun struct {
	spec     corev1.Container
	argv     []string
	env      []string
	cmd      *exec.Cmd
	exited   chan struct{}
	restarts int32
	ready    bool
	running  bool
	started  metav1.Time
}

func (k *kubelet) start(ctx context.Context, pod *corev1.Pod) (*podRun, error) {
	addr, err := k.allocateIP()
	if err != nil {
		return nil, err
	}
	short := strings.ReplaceAll(string(pod.UID), "-", "")[:10]
	r := &podRun{
		k: k, namespace: pod.Namespace, name: pod.Name, uid: pod.UID, netns: nsPrefix + short, ip: addr,
		dir: filepath.Join(k.dir, "pods", string(pod.UID)), started: metav1.Now(), done: make(chan struct{}),
	}
	fail := func(err error) (*podRun, error) {
		_ = ip("netns", "del", r.netns)
		k.release("", r)
		return nil, err
	}
	host := vethHost + short
	steps := [][]string{
		{"netns", "add", r.netns},
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", r.netns},
		{"link", "set", host, "master", bridge, "up"},
		{"-n", r.netns, "addr", "add", addr.String() + "/16", "dev", "eth0"},
		{"-n", r.netns, "link", "set", "eth0", "up"},
		{"-n", r.netns, "link", "set", "lo", "up"},
		{"-n", r.netns, "route", "add", "default", "via", nodeIP.String()},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fail(err)
		}
	}
	mounts, err := k.writeVolumes(ctx, pod, r)
	if err != nil {
		return fail(fmt.Errorf("volumes: %w", err))
	}
	resolv := filepath.Join(r.dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte(fmt.Sprintf(
		"nameserver %s\nsearch %s.svc.%s svc.%s %s\noptions ndots:5\n",
		nodeIP, pod.Namespace, domain, domain, domain)), 0o644); err != nil {
		return fail(err)
	}
	for _, c := range pod.Spec.Containers {
		bin, _ := k.binary(c.Image)
		cr, err := k.container(ctx, pod, r, c, bin, mounts[c.Name], resolv)
		if err != nil {
			return fail(fmt.Errorf("container %s: %w", c.Name, err))
		}
		r.containers = append(r.containers, cr)
	}
	for _, c := range r.containers {
		r.launch(c)
	}
	go r.supervise(ctx, pod)
	return r, nil
}

// mountSet says, for one container, where each of its volume mounts lives on this host.
type mountSet struct {
	bind    map[string]string // mount path under /run → host path (bind-mounted)
	rewrite map[string]string // other mount paths → host path (rewritten in args and env)
}

func (k *kubelet) writeVolumes(ctx context.Context, pod *corev1.Pod, r *podRun) (map[string]mountSet, error) {
	vols := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		d := filepath.Join(r.dir, "volumes", v.Name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		vols[v.Name] = d
		if err := k.fillVolume(ctx, pod, v.VolumeSource, d); err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	out := map[string]mountSet{}
	for _, c := range pod.Spec.Containers {
		m := mountSet{bind: map[string]string{}, rewrite: map[string]string{}}
		for _, vm := range c.VolumeMounts {
			src, ok := vols[vm.Name]
			if !ok {
				return nil, fmt.Errorf("container %s mounts unknown volume %s", c.Name, vm.Name)
			}
			if vm.SubPath != "" {
				src = filepath.Join(src, vm.SubPath)
			}
			path := filepath.Clean(vm.MountPath)
			if p, ok := strings.CutPrefix(path, "/var/run/"); ok {
				path = "/run/" + p
			}
			if strings.HasPrefix(path, "/run/") {
				m.bind[path] = src
			} else {
				m.rewrite[filepath.Clean(vm.MountPath)] = src
			}
		}
		out[c.Name] = m
	}
	return out, nil
}

func writeFiles(dir string, files map[string][]byte) error {
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func pick(all map[string][]byte, items []corev1.KeyToPath) map[string][]byte {
	if len(items) == 0 {
		return all
	}
	out := map[string][]byte{}
	for _, it := range items {
		if v, ok := all[it.Key]; ok {
			out[it.Path] = v
		}
	}
	return out
}

func (k *kubelet) configMapFiles(ctx context.Context, ns, name string) (map[string][]byte, error) {
	cm, err := k.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for key, v := range cm.Data {
		out[key] = []byte(v)
	}
	for key, v := range cm.BinaryData {
		out[key] = v
	}
	return out, nil
}

func (k *kubelet) secretFiles(ctx context.Context, ns, name string) (map[string][]byte, error) {
	s, err := k.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return s.Data, nil
}

func (k *kubelet) fillVolume(ctx context.Context, pod *corev1.Pod, v corev1.VolumeSource, dir string) error {
	switch {
	case v.EmptyDir != nil:
		return nil
	case v.Secret != nil:
		files, err := k.secretFiles(ctx, pod.Namespace, v.Secret.SecretName)
		if err != nil {
			return err
		}
		return writeFiles(dir, pick(files, v.Secret.Items))
	case v.ConfigMap != nil:
		files, err := k.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name)
		if err != nil {
			return err
		}
		return writeFiles(dir, pick(files, v.ConfigMap.Items))
	case v.DownwardAPI != nil:
		return writeFiles(dir, downward(pod, v.DownwardAPI.Items))
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			var files map[string][]byte
			var err error
			switch {
			case s.ServiceAccountToken != nil:
				var token string
				token, err = k.token(ctx, pod, s.ServiceAccountToken)
				files = map[string][]byte{s.ServiceAccountToken.Path: []byte(token)}
			case s.ConfigMap != nil:
				files, err = k.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name)
				files = pick(files, s.ConfigMap.Items)
			case s.Secret != nil:
				files, err = k.secretFiles(ctx, pod.Namespace, s.Secret.Name)
				files = pick(files, s.Secret.Items)
			case s.DownwardAPI != nil:
				files = downward(pod, s.DownwardAPI.Items)
			}
			if err != nil {
				return err
			}
			if err := writeFiles(dir, files); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("this kind of volume is not supported by the test kubelet")
}

func downward(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile) map[string][]byte {
	out := map[string][]byte{}
	for _, it := range items {
		if it.FieldRef != nil {
			out[it.Path] = []byte(fieldValue(pod, it.FieldRef.FieldPath, ""))
		}
	}
	return out
}

func (k *kubelet) token(ctx context.Context, pod *corev1.Pod, p *corev1.ServiceAccountTokenProjection) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: p.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if p.Audience != "" {
		req.Spec.Audiences = []string{p.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := k.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

func fieldValue(pod *corev1.Pod, path, podIP string) string {
	switch path {
	case "metadata.name":
		return pod.Name
	case "metadata.namespace":
		return pod.Namespace
	case "metadata.uid":
		return string(pod.UID)
	case "spec.nodeName":
		return pod.Spec.NodeName
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName
	case "status.podIP", "status.podIPs":
		return podIP
	case "status.hostIP", "status.hostIPs":
		return nodeIP.String()
	}
	if key, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(key, "']")]
	}
	if key, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(key, "']")]
	}
	return ""
}

// rewrite replaces a mount path at the start of s (or after '=') with its host path.
func rewrite(s string, m mountSet) string {
	paths := make([]string, 0, len(m.rewrite))
	for p := range m.rewrite {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, p := range paths {
		for _, lead := range []string{"", "="} {
			i := strings.Index(s, lead+p)
			if i < 0 || (lead == "" && i != 0) {
				continue
			}
			rest := s[i+len(lead)+len(p):]
			if rest == "" || rest[0] == '/' {
				return s[:i+len(lead)] + m.rewrite[p] + rest
			}
		}
	}
	return s
}

func (k *kubelet) container(ctx context.Context, pod *corev1.Pod, r *podRun, c corev1.Container, bin string, m mountSet, resolv string) (*containerRun, error) {
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOSTNAME=" + pod.Name,
		"KUBERNETES_SERVICE_HOST=" + k.services.kubernetesIP(),
		"KUBERNETES_SERVICE_PORT=443",
	}
	for _, e := range c.Env {
		v := e.Value
		if s := e.ValueFrom; s != nil {
			switch {
			case s.FieldRef != nil:
				v = fieldValue(pod, s.FieldRef.FieldPath, r.ip.String())
			case s.SecretKeyRef != nil:
				files, err := k.secretFiles(ctx, pod.Namespace, s.SecretKeyRef.Name)
				if err != nil && !ptr.Deref(s.SecretKeyRef.Optional, false) {
					return nil, err
				}
				v = string(files[s.SecretKeyRef.Key])
			case s.ConfigMapKeyRef != nil:
				files, err := k.configMapFiles(ctx, pod.Namespace, s.ConfigMapKeyRef.Name)
				if err != nil && !ptr.Deref(s.ConfigMapKeyRef.Optional, false) {
					return nil, err
				}
				v = string(files[s.ConfigMapKeyRef.Key])
			case s.ResourceFieldRef != nil:
				v = "1"
			}
		}
		env = append(env, e.Name+"="+rewrite(v, m))
	}
	args := make([]string, 0, len(c.Args))
	for _, a := range c.Args {
		args = append(args, rewrite(os.Expand(a, func(n string) string {
			for _, kv := range env {
				if name, val, _ := strings.Cut(kv, "="); name == n {
					return val
				}
			}
			return "$(" + n + ")"
		}), m))
	}
	// In the pod's network namespace, a mount namespace of its own: a tmpfs on /run with the
	// /run mounts bound in, and this kubelet's resolv.conf.
	var script strings.Builder
	script.WriteString("set -e\nmount -t tmpfs -o mode=755 tmpfs /run\n")
	binds := make([]string, 0, len(m.bind))
	for p := range m.bind {
		binds = append(binds, p)
	}
	sort.Strings(binds)
	for _, p := range binds {
		fmt.Fprintf(&script, "mkdir -p %q\nmount --bind %q %q\n", p, m.bind[p], p)
	}
	fmt.Fprintf(&script, "mount --bind %q /etc/resolv.conf\n", resolv)
	if c.WorkingDir != "" {
		fmt.Fprintf(&script, "cd %q 2>/dev/null || true\n", rewrite(c.WorkingDir, m))
	}
	script.WriteString("exec \"$@\"\n")
	argv := append([]string{"netns", "exec", r.netns, "unshare", "--mount", "--propagation", "private",
		"/bin/sh", "-c", script.String(), "sh", bin}, args...)
	if err := os.MkdirAll(filepath.Join(r.dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	return &containerRun{spec: c, argv: argv, env: env}, nil
}

// launch starts (or restarts) one container's process, its output timestamped into the
// pod's log file.
func (r *podRun) launch(c *containerRun) {
	cmd := exec.Command("ip", c.argv...)
	cmd.Env = c.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r.mu.Lock()
	restarted := c.restarts > 0
	r.mu.Unlock()
	if restarted {
		r.rotateLog(c.spec.Name)
	}
	logf, err := os.OpenFile(r.logFile(c.spec.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Printf("kubelet: %s/%s: log file: %v", r.namespace, r.name, err)
		return
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		defer logf.Close()
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64*1024), 1024*1024)
		for s.Scan() {
			fmt.Fprintf(logf, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), s.Text())
		}
	}()
	exited := make(chan struct{})
	r.mu.Lock()
	c.cmd, c.exited, c.running, c.ready, c.started = cmd, exited, true, false, metav1.Now()
	r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		log.Printf("kubelet: %s/%s: start %s: %v", r.namespace, r.name, c.spec.Name, err)
		_ = pw.Close()
		r.mu.Lock()
		c.running = false
		r.mu.Unlock()
		close(exited)
		return
	}
	go func() {
		_ = cmd.Wait()
		_ = pw.Close()
		r.mu.Lock()
		c.running, c.ready = false, false
		r.mu.Unlock()
		close(exited)
	}()
}

// supervise probes readiness, restarts what exits and writes the pod's status when it
// changes, until the pod stops.
func (r *podRun) supervise(ctx context.Context, pod *corev1.Pod) {
	backoff := map[string]time.Duration{}
	var last, lastErr string
	for {
		r.mu.Lock()
		stopping := r.stopping
		cs := append([]*containerRun{}, r.containers...)
		r.mu.Unlock()
		if stopping {
			return
		}
		for _, c := range cs {
			select {
			case <-c.exited:
				if pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
					continue
				}
				d := backoff[c.spec.Name]
				if d == 0 {
					d = 500 * time.Millisecond
				}
				if time.Since(c.started.Time) > 30*time.Second {
					d = 500 * time.Millisecond
				}
				if time.Since(c.started.Time) >= d {
					backoff[c.spec.Name] = min(2*d, 10*time.Second)
					r.mu.Lock()
					c.restarts++
					r.mu.Unlock()
					r.launch(c)
				}
			default:
				ready := r.probe(c)
				r.mu.Lock()
				c.ready = ready
				r.mu.Unlock()
			}
		}
		status := r.status(pod)
		if b, _ := json.Marshal(status); string(b) != last {
			if err := r.writeStatus(ctx, pod, status); err == nil {
				last = string(b)
			} else if err.Error() != lastErr {
				lastErr = err.Error()
				log.Printf("kubelet: status of %s/%s: %v", r.namespace, r.name, err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.done:
			return
		case <-time.After(probeWait):
		}
	}
}

func (r *podRun) probe(c *containerRun) bool {
	p := c.spec.ReadinessProbe
	if p == nil {
		return true
	}
	if time.Since(c.started.Time) < time.Duration(p.InitialDelaySeconds)*time.Second {
		return false
	}
	port := func(v intstr.IntOrString) string {
		if v.Type == intstr.Int {
			return strconv.Itoa(v.IntValue())
		}
		for _, cp := range c.spec.Ports {
			if cp.Name == v.StrVal {
				return strconv.Itoa(int(cp.ContainerPort))
			}
		}
		return v.StrVal
	}
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	switch {
	case p.HTTPGet != nil:
		addr := net.JoinHostPort(r.ip.String(), port(p.HTTPGet.Port))
		client := http.Client{Timeout: timeout}
		resp, err := client.Get("http://" + addr + p.HTTPGet.Path)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case p.TCPSocket != nil:
		addr := net.JoinHostPort(r.ip.String(), port(p.TCPSocket.Port))
		conn, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	}
	return true
}

func (r *podRun) status(pod *corev1.Pod) corev1.PodStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	allReady := true
	var statuses []corev1.ContainerStatus
	for _, c := range r.containers {
		st := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: c.spec.Image, Ready: c.ready,
			RestartCount: c.restarts, Started: ptr.To(c.running), ContainerID: "portico-test://" + c.spec.Name,
		}
		if c.running {
			st.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
		} else {
			st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}
		}
		statuses = append(statuses, st)
		allReady = allReady && c.ready
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: r.started}
	}
	return corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    nodeIP.String(),
		HostIPs:   []corev1.HostIP{{IP: nodeIP.String()}},
		PodIP:     r.ip.String(),
		PodIPs:    []corev1.PodIP{{IP: r.ip.String()}},
		StartTime: &r.started,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodScheduled, true), cond(corev1.PodInitialized, true),
			cond(corev1.ContainersReady, allReady), cond(corev1.PodReady, allReady),
		},
		ContainerStatuses: statuses,
	}
}

func (r *podRun) writeStatus(ctx context.Context, pod *corev1.Pod, status corev1.PodStatus) error {
	current, err := r.k.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if current.UID != r.uid || current.DeletionTimestamp != nil {
		return nil
	}
	status.QOSClass = current.Status.QOSClass // the API server's to set
	current.Status = status
	_, err = r.k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, current, metav1.UpdateOptions{})
	return err
}

// stop ends every process (SIGTERM, then SIGKILL after grace) and removes the namespace.
func (r *podRun) stop(grace time.Duration) {
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return
	}
	r.stopping = true
	close(r.done)
	cs := append([]*containerRun{}, r.containers...)
	r.mu.Unlock()
	for _, c := range cs {
		if c.cmd != nil && c.cmd.Process != nil {
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
		}
	}
	deadline := time.After(grace)
	for _, c := range cs {
		if c.exited == nil {
			continue
		}
		select {
		case <-c.exited:
		case <-deadline:
			for _, c := range cs {
				if c.cmd != nil && c.cmd.Process != nil {
					_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				}
			}
			<-c.exited
		}
	}
	_ = ip("netns", "del", r.netns)
}

// --- DNS ----------------------------------------------------------------------------------

func serveDNS(addr string, resolve func(name string) net.IP) {
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			if q.Qtype != dns.TypeA {
				continue
			}
			if a := resolve(strings.TrimSuffix(strings.ToLower(q.Name), ".")); a != nil {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
					A:   a,
				})
			}
		}
		if len(m.Answer) == 0 {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	server := &dns.Server{Addr: addr, Net: "udp", Handler: handler}
	if err := server.ListenAndServe(); err != nil {
		log.Printf("kubelet: DNS on %s: %v", addr, err)
	}
}

// --- Services -----------------------------------------------------------------------------

type serviceProxy struct {
	k        *kubelet
	services func() ([]*corev1.Service, error)
	slices   func(ns, svc string) ([]*discoveryv1.EndpointSlice, error)

	mu        sync.Mutex
	listeners map[string]*forwarder // "tcp/ip:port" or "udp/ip:port" → forwarder
	lbIPs     map[types.UID]net.IP
	nextLB    byte              // the last address given from the pool (198.19.255.nextLB)
	clusterIP map[string]net.IP // "ns/name" → ClusterIP
	rr        uint32
	kick      chan struct{}
}

type forwarder struct {
	ln      net.Listener   // a TCP port
	pc      net.PacketConn // a UDP port
	service types.NamespacedName
	port    corev1.ServicePort
}

// close stops the forwarder's listener (its UDP flows end with it).
func (f *forwarder) close() {
	if f.ln != nil {
		_ = f.ln.Close()
	}
	if f.pc != nil {
		_ = f.pc.Close()
	}
}

func newServiceProxy(k *kubelet, f informers.SharedInformerFactory) *serviceProxy {
	svcs := f.Core().V1().Services()
	eps := f.Discovery().V1().EndpointSlices()
	p := &serviceProxy{
		k:         k,
		services:  func() ([]*corev1.Service, error) { return svcs.Lister().List(labels.Everything()) },
		listeners: map[string]*forwarder{}, lbIPs: map[types.UID]net.IP{}, clusterIP: map[string]net.IP{},
		kick: make(chan struct{}, 1),
	}
	p.slices = func(ns, svc string) ([]*discoveryv1.EndpointSlice, error) {
		return eps.Lister().EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc}))
	}
	kick := func(any) {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: kick, UpdateFunc: func(_, n any) { kick(n) }, DeleteFunc: kick}
	_, _ = svcs.Informer().AddEventHandler(h)
	_, _ = eps.Informer().AddEventHandler(h)
	go func() {
		for range p.kick {
			p.reconcile()
		}
	}()
	return p
}

func (p *serviceProxy) kubernetesIP() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.clusterIP["default/kubernetes"]; ok {
		return a.String()
	}
	return "10.96.0.1"
}

func (p *serviceProxy) resolve(name string) net.IP {
	// <service>.<namespace>.svc.cluster.local
	rest, ok := strings.CutSuffix(name, ".svc."+domain)
	if !ok {
		return nil
	}
	svc, ns, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(ns, ".") {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.clusterIP[ns+"/"+svc]
}

func (p *serviceProxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.listeners {
		f.close()
	}
}

// reconcile makes the listeners match the Services: one per (address, port) for ClusterIPs
// and LoadBalancer addresses, and the LoadBalancer status.
func (p *serviceProxy) reconcile() {
	svcs, err := p.services()
	if err != nil {
		return
	}
	want := map[string]*forwarder{}
	clusterIPs := map[string]net.IP{}
	var lbUpdates []*corev1.Service
	p.mu.Lock()
	// Addresses of Services that are gone, or no longer LoadBalancers, are free before
	// anything is allocated (a Service deleted and one made asking for its address, in
	// one round, must find it free).
	lbs := map[types.UID]bool{}
	for _, s := range svcs {
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
			lbs[s.UID] = true
		}
	}
	for uid := range p.lbIPs {
		if !lbs[uid] {
			delete(p.lbIPs, uid)
		}
	}
	for _, s := range svcs {
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		var addrs []net.IP
		if a := net.ParseIP(s.Spec.ClusterIP); a != nil {
			addrs = append(addrs, a)
			clusterIPs[key.String()] = a
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
			lb := p.lbAddress(s)
			if lb != nil {
				addrs = append(addrs, lb)
				if len(s.Status.LoadBalancer.Ingress) != 1 || s.Status.LoadBalancer.Ingress[0].IP != lb.String() {
					c := s.DeepCopy()
					c.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lb.String(), IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}}
					lbUpdates = append(lbUpdates, c)
				}
			} else if len(s.Status.LoadBalancer.Ingress) > 0 {
				c := s.DeepCopy()
				c.Status.LoadBalancer.Ingress = nil
				lbUpdates = append(lbUpdates, c)
			}
		} else if len(s.Status.LoadBalancer.Ingress) > 0 {
			// No longer a LoadBalancer: its address is withdrawn.
			c := s.DeepCopy()
			c.Status.LoadBalancer.Ingress = nil
			lbUpdates = append(lbUpdates, c)
		}
		for _, a := range addrs {
			for _, port := range s.Spec.Ports {
				proto := "tcp"
				switch port.Protocol {
				case "", corev1.ProtocolTCP:
				case corev1.ProtocolUDP:
					proto = "udp"
				default:
					continue
				}
				want[proto+"/"+net.JoinHostPort(a.String(), strconv.Itoa(int(port.Port)))] = &forwarder{service: key, port: port}
			}
		}
	}
	p.clusterIP = clusterIPs
	for addr, f := range p.listeners {
		if w, ok := want[addr]; !ok {
			f.close()
			delete(p.listeners, addr)
		} else {
			f.service, f.port = w.service, w.port
		}
	}
	for addr, f := range want {
		if _, ok := p.listeners[addr]; ok {
			continue
		}
		proto, hostPort, _ := strings.Cut(addr, "/")
		host, _, _ := net.SplitHostPort(hostPort)
		_ = ip("addr", "add", host+"/32", "dev", bridge) // fails harmlessly when present
		if proto == "udp" {
			pc, err := net.ListenPacket("udp", hostPort)
			if err != nil {
				log.Printf("kubelet: service %s: listen udp %s: %v", f.service, hostPort, err)
				continue
			}
			f.pc = pc
			p.listeners[addr] = f
			go p.relay(f)
			continue
		}
		ln, err := net.Listen("tcp", hostPort)
		if err != nil {
			log.Printf("kubelet: service %s: listen %s: %v", f.service, hostPort, err)
			continue
		}
		f.ln = ln
		p.listeners[addr] = f
		go p.accept(f)
	}
	p.mu.Unlock()
	for _, s := range lbUpdates {
		if _, err := p.k.client.CoreV1().Services(s.Namespace).UpdateStatus(context.Background(), s, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			log.Printf("kubelet: LoadBalancer status of %s/%s: %v", s.Namespace, s.Name, err)
		}
	}
}

// lbAddress is the LoadBalancer address of s (p.mu held): the one spec.loadBalancerIP asks
// for if it is in 198.19.255.0/24 and no other Service has it, none if it asks for another,
// else the one it has, else the next free one after the last given (so that an address a
// deleted Service had is not at once another's, while a test may still be reaching it).
func (p *serviceProxy) lbAddress(s *corev1.Service) net.IP {
	taken := func(ip net.IP) bool {
		for uid, other := range p.lbIPs {
			if uid != s.UID && other.Equal(ip) {
				return true
			}
		}
		return false
	}
	var lb net.IP
	if want := s.Spec.LoadBalancerIP; want != "" {
		ip := net.ParseIP(want).To4()
		if ip != nil && ip[0] == 198 && ip[1] == 19 && ip[2] == 255 && ip[3] != 0 && ip[3] != 255 && !taken(ip) {
			lb = ip
		}
	} else if cur, ok := p.lbIPs[s.UID]; ok {
		lb = cur
	} else {
		for i := 0; i < 254; i++ {
			n := byte(1 + (int(p.nextLB)+i)%254)
			if ip := net.IPv4(198, 19, 255, n).To4(); !taken(ip) {
				lb = ip
				p.nextLB = n
				break
			}
		}
	}
	if lb == nil {
		delete(p.lbIPs, s.UID)
	} else {
		p.lbIPs[s.UID] = lb
	}
	return lb
}

func (p *serviceProxy) accept(f *forwarder) {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		svc, port := f.service, f.port
		p.mu.Unlock()
		go p.forward(conn, svc, port)
	}
}

// backend picks a ready endpoint of the Service port (round robin).
func (p *serviceProxy) backend(svc types.NamespacedName, port corev1.ServicePort) string {
	if svc.Namespace == "default" && svc.Name == "kubernetes" {
		return p.k.apiServer
	}
	slices, err := p.slices(svc.Namespace, svc.Name)
	if err != nil {
		return ""
	}
	var candidates []string
	for _, s := range slices {
		target := int32(0)
		for _, sp := range s.Ports {
			if ptr.Deref(sp.Name, "") == port.Name && sp.Port != nil {
				target = *sp.Port
			}
		}
		if target == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if !ptr.Deref(e.Conditions.Ready, true) {
				continue
			}
			for _, a := range e.Addresses {
				candidates = append(candidates, net.JoinHostPort(a, strconv.Itoa(int(target))))
			}
		}
	}
	if len(candidates) == 0 {
		return ""
	}
	sort.Strings(candidates)
	p.mu.Lock()
	p.rr++
	i := int(p.rr) % len(candidates)
	p.mu.Unlock()
	return candidates[i]
}

func (p *serviceProxy) forward(conn net.Conn, svc types.NamespacedName, port corev1.ServicePort) {
	defer conn.Close()
	var up net.Conn
	for attempt := 0; attempt < 3; attempt++ {
		target := p.backend(svc, port)
		if target == "" {
			return
		}
		c, err := net.DialTimeout("tcp", target, 3*time.Second)
		if err == nil {
			up = c
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, conn)
	go pipe(conn, up)
	<-done
	<-done
}

// udpFlowIdle is how long a UDP flow through a Service lives without a datagram either way.
const udpFlowIdle = 30 * time.Second

// relay forwards a Service's UDP port as kube-proxy does: each client address is a flow with
// its own endpoint, picked when its first datagram arrives, and replies go back from the
// Service's address (a client with a connected socket takes nothing else).
func (p *serviceProxy) relay(f *forwarder) {
	type flow struct {
		up   *net.UDPConn
		seen time.Time
	}
	var mu sync.Mutex
	flows := map[string]*flow{}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, fl := range flows {
			_ = fl.up.Close()
		}
	}()
	buf := make([]byte, 65535)
read:
	for {
		n, client, err := f.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		key := client.String()
		// Twice at most: a flow that ended (idle) just as this datagram came is replaced.
		for attempt := 0; attempt < 2; attempt++ {
			mu.Lock()
			fl, ok := flows[key]
			mu.Unlock()
			if !ok {
				p.mu.Lock()
				svc, port := f.service, f.port
				p.mu.Unlock()
				target := p.backend(svc, port)
				if target == "" {
					continue read
				}
				raddr, err := net.ResolveUDPAddr("udp", target)
				if err != nil {
					continue read
				}
				up, err := net.DialUDP("udp", nil, raddr)
				if err != nil {
					continue read
				}
				fl = &flow{up: up, seen: time.Now()}
				mu.Lock()
				flows[key] = fl
				mu.Unlock()
				go func() {
					defer func() {
						mu.Lock()
						if flows[key] == fl {
							delete(flows, key)
						}
						mu.Unlock()
						_ = up.Close()
					}()
					reply := make([]byte, 65535)
					for {
						_ = up.SetReadDeadline(time.Now().Add(udpFlowIdle))
						n, err := up.Read(reply)
						if err != nil {
							var ne net.Error
							if errors.As(err, &ne) && ne.Timeout() {
								mu.Lock()
								idle := time.Since(fl.seen) >= udpFlowIdle
								mu.Unlock()
								if !idle {
									continue
								}
							}
							return
						}
						if _, err := f.pc.WriteTo(reply[:n], client); err != nil {
							return
						}
					}
				}()
			}
			mu.Lock()
			fl.seen = time.Now()
			mu.Unlock()
			if _, err := fl.up.Write(buf[:n]); err == nil || !errors.Is(err, net.ErrClosed) {
				continue read
			}
			mu.Lock()
			if flows[key] == fl {
				delete(flows, key)
			}
			mu.Unlock()
		}
	}
}
