package deploytest

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered is one kustomization's output: every object decoded strictly.
type rendered struct {
	dir     string // relative to deploy/kubernetes
	yaml    []byte // the whole stream, as kubectl kustomize prints it
	objects []renderedObject
}

type renderedObject struct {
	kind, namespace, name string
	doc                   []byte
	obj                   any
}

// kustomizationDirs lists the directories under deploy/kubernetes holding a
// kustomization that can be built on its own (Components cannot).
func kustomizationDirs(t testing.TB) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(manifestsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var k types.Kustomization
		if err := yaml.Unmarshal(data, &k); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if k.Kind != types.ComponentKind {
			dirs = append(dirs, filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return dirs
}

// renderAll builds every kustomization with kustomize's own library, as
// `kubectl kustomize` does, and decodes each output object strictly.
func renderAll(t testing.TB) []rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	fsys := filesys.MakeFsOnDisk()
	var out []rendered
	for _, dir := range kustomizationDirs(t) {
		rel, _ := filepath.Rel(manifestsDir, dir)
		abs, err := filepath.Abs(dir)
		if err != nil {
			t.Fatal(err)
		}
		resMap, err := k.Run(fsys, abs)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", rel, err)
		}
		stream, err := resMap.AsYaml()
		if err != nil {
			t.Fatalf("kustomize build %s: %v", rel, err)
		}
		r := rendered{dir: rel, yaml: stream}
		for _, res := range resMap.Resources() {
			doc, err := res.AsYAML()
			if err != nil {
				t.Fatalf("%s: %v", rel, err)
			}
			obj, _, err := decodeObject(doc)
			if err != nil {
				t.Fatalf("%s: %s %s: %v", rel, res.GetKind(), res.GetName(), err)
			}
			r.objects = append(r.objects, renderedObject{kind: res.GetKind(), namespace: res.GetNamespace(), name: res.GetName(), doc: doc, obj: obj})
		}
		out = append(out, r)
	}
	return out
}

func (r rendered) find(kind, name string) any {
	for _, o := range r.objects {
		if o.kind == kind && o.name == name {
			return o.obj
		}
	}
	return nil
}

// TestKustomizeBuild renders every kustomization and checks what each one is
// for. The expected directories are listed so a new one needs a decision here.
func TestKustomizeBuild(t *testing.T) {
	all := renderAll(t)
	byDir := map[string]rendered{}
	for _, r := range all {
		byDir[r.dir] = r
	}
	checks := map[string]func(t *testing.T, r rendered){
		"base":                              func(t *testing.T, r rendered) { checkExampleApp(t, r, true) },
		"overlays/classic":                  func(t *testing.T, r rendered) { checkExampleApp(t, r, false) },
		"overlays/servicemonitor":           checkServiceMonitor,
		"injector":                          func(t *testing.T, r rendered) { checkInjector(t, r, true, "auto") },
		"overlays/injector-classic":         func(t *testing.T, r rendered) { checkInjector(t, r, true, "false") },
		"overlays/injector-self-managed-ca": func(t *testing.T, r rendered) { checkInjector(t, r, false, "auto") },
		"authz/service":                     checkAuthzService,
		"authz/traefik":                     checkTraefikRecipe,
		"authz/istio":                       checkIstioRecipe,
		"authz/envoy-gateway":               checkEnvoyGatewayRecipe,
	}
	for dir := range byDir {
		if _, ok := checks[dir]; !ok {
			t.Errorf("kustomization %s has no check in TestKustomizeBuild", dir)
		}
	}
	for dir, check := range checks {
		t.Run(dir, func(t *testing.T) {
			r, ok := byDir[dir]
			if !ok {
				t.Fatalf("no kustomization in %s", dir)
			}
			check(t, r)
		})
	}
}

// checkExampleApp checks the sidecar example: where keygate runs, that the
// Service's named port reaches keygate, and the hardening the issue asks for.
func checkExampleApp(t *testing.T, r rendered, native bool) {
	t.Helper()
	dep, _ := r.find("Deployment", "shop-api").(*appsv1.Deployment)
	svc, _ := r.find("Service", "shop-api").(*corev1.Service)
	if dep == nil || svc == nil {
		t.Fatalf("want Deployment and Service shop-api, got %d objects", len(r.objects))
	}
	spec := dep.Spec.Template.Spec
	var kg *corev1.Container
	list := spec.Containers
	if native {
		list = spec.InitContainers
	}
	for i := range list {
		if list[i].Name == "keygate" {
			kg = &list[i]
		}
	}
	if kg == nil {
		t.Fatalf("keygate not among the %s", map[bool]string{true: "init containers", false: "containers"}[native])
	}
	isSidecar := kg.RestartPolicy != nil && *kg.RestartPolicy == corev1.ContainerRestartPolicyAlways
	if isSidecar != native {
		t.Errorf("keygate restartPolicy %v, want native sidecar = %v", kg.RestartPolicy, native)
	}
	if !native && len(spec.InitContainers) != 0 {
		t.Errorf("classic overlay keeps %d init containers", len(spec.InitContainers))
	}
	pod := &corev1.Pod{Spec: spec}
	for _, p := range svc.Spec.Ports {
		port, ok := resolveTargetPort(pod, p.TargetPort)
		if !ok {
			t.Errorf("Service port %s: targetPort %s resolves to no container port", p.Name, p.TargetPort.String())
			continue
		}
		if !hasPort(kg, port) {
			t.Errorf("Service port %s reaches %d, not keygate", p.Name, port)
		}
	}
	env := map[string]string{}
	for _, e := range kg.Env {
		env[e.Name] = e.Value
	}
	if !strings.HasPrefix(env["KEYGATE_UPSTREAM_URL"], "http://127.0.0.1:") || env["KEYGATE_ROUTES_FILE"] == "" {
		t.Errorf("keygate env: %v", env)
	}
	if len(kg.EnvFrom) != 1 || kg.EnvFrom[0].SecretRef == nil || r.find("Secret", kg.EnvFrom[0].SecretRef.Name) == nil {
		t.Errorf("keygate envFrom does not name a Secret of this build: %+v", kg.EnvFrom)
	}
	var routesCM string
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil {
			routesCM = v.ConfigMap.Name
		}
	}
	if cm, _ := r.find("ConfigMap", routesCM).(*corev1.ConfigMap); cm == nil || cm.Data["routes.yaml"] == "" {
		t.Errorf("routes ConfigMap %q missing from the build or has no routes.yaml", routesCM)
	}
	for _, pr := range []struct {
		probe *corev1.Probe
		path  string
	}{{kg.ReadinessProbe, "/readyz"}, {kg.LivenessProbe, "/healthz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil || pr.probe.HTTPGet.Path != pr.path {
			t.Errorf("keygate probe for %s: %+v", pr.path, pr.probe)
			continue
		}
		if port, ok := resolveContainerPort(kg, pr.probe.HTTPGet.Port); !ok || port != 9090 {
			t.Errorf("probe %s on port %d, want the metrics port 9090", pr.path, port)
		}
	}
	checkHardened(t, &spec, append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...))
	checkGracePeriod(t, &spec, kg)
	if dep.Spec.Template.Annotations["prometheus.io/scrape"] != "true" {
		t.Error("no Prometheus scrape annotation")
	}
}

func checkServiceMonitor(t *testing.T, r rendered) {
	t.Helper()
	sm, _ := r.find("ServiceMonitor", "shop-api-keygate").(*serviceMonitor)
	svc, _ := r.find("Service", "shop-api").(*corev1.Service)
	if sm == nil || svc == nil {
		t.Fatal("want ServiceMonitor shop-api-keygate and Service shop-api")
	}
	for _, ep := range sm.Spec.Endpoints {
		found := false
		for _, p := range svc.Spec.Ports {
			found = found || p.Name == ep.Port
		}
		if !found {
			t.Errorf("ServiceMonitor endpoint port %q is not a port of Service shop-api", ep.Port)
		}
	}
}

// checkInjector checks the webhook's deployment: the settings the issue fixes
// (failurePolicy, sideEffects, reinvocation, selectors), the certificate
// wiring, and the sidecar mode the injector is told to use (auto, true or
// false) with the service account token auto needs to ask for the version.
func checkInjector(t *testing.T, r rendered, certManager bool, nativeMode string) {
	t.Helper()
	mwc, _ := r.find("MutatingWebhookConfiguration", "keygate-injector").(*admissionregistrationv1.MutatingWebhookConfiguration)
	dep, _ := r.find("Deployment", "keygate-injector").(*appsv1.Deployment)
	svc, _ := r.find("Service", "keygate-injector").(*corev1.Service)
	if mwc == nil || dep == nil || svc == nil {
		t.Fatal("want MutatingWebhookConfiguration, Deployment and Service keygate-injector")
	}
	if len(mwc.Webhooks) != 1 {
		t.Fatalf("%d webhooks, want 1", len(mwc.Webhooks))
	}
	wh := mwc.Webhooks[0]
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("failurePolicy %v, want Fail", wh.FailurePolicy)
	}
	if wh.SideEffects == nil || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("sideEffects %v, want None", wh.SideEffects)
	}
	if wh.ReinvocationPolicy == nil || *wh.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
		t.Errorf("reinvocationPolicy %v, want IfNeeded", wh.ReinvocationPolicy)
	}
	if wh.NamespaceSelector == nil || len(wh.NamespaceSelector.MatchExpressions) == 0 {
		t.Error("no namespaceSelector")
	}
	cs := wh.ClientConfig.Service
	if cs == nil || cs.Name != svc.Name || cs.Namespace != dep.Namespace || cs.Path == nil || *cs.Path != "/mutate" {
		t.Errorf("webhook clientConfig.service %+v does not point at Service %s/%s /mutate", cs, dep.Namespace, svc.Name)
	}
	_, annotated := mwc.Annotations["cert-manager.io/inject-ca-from"]
	hasCert := r.find("Certificate", "keygate-injector") != nil
	if annotated != certManager || hasCert != certManager {
		t.Errorf("cert-manager annotation %v, Certificate %v; want both %v", annotated, hasCert, certManager)
	}
	if ns, _ := r.find("Namespace", dep.Namespace).(*corev1.Namespace); ns == nil {
		t.Errorf("namespace %s not in the build", dep.Namespace)
	}
	var excluded []string
	for _, e := range wh.NamespaceSelector.MatchExpressions {
		if e.Key == "kubernetes.io/metadata.name" {
			excluded = e.Values
		}
	}
	for _, ns := range []string{"kube-system", dep.Namespace} {
		found := false
		for _, v := range excluded {
			found = found || v == ns
		}
		if !found {
			t.Errorf("namespaceSelector does not exclude %s", ns)
		}
	}
	c := dep.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	for _, k := range []string{"KEYGATE_INJECT_ADDR", "KEYGATE_INJECT_TLS_CERT", "KEYGATE_INJECT_TLS_KEY", "KEYGATE_INJECT_IMAGE", "KEYGATE_INJECT_CONFIG_SECRET"} {
		if env[k] == "" {
			t.Errorf("injector env %s not set", k)
		}
	}
	if env["KEYGATE_INJECT_NATIVE_SIDECAR"] != nativeMode {
		t.Errorf("KEYGATE_INJECT_NATIVE_SIDECAR %q, want %q", env["KEYGATE_INJECT_NATIVE_SIDECAR"], nativeMode)
	}
	// auto reads the mounted token and CA to call GET /version; the pod's
	// setting wins over the ServiceAccount's, so it must say true itself.
	podMount := dep.Spec.Template.Spec.AutomountServiceAccountToken
	if mounted := podMount != nil && *podMount; mounted != (nativeMode == "auto") {
		t.Errorf("automountServiceAccountToken %v with KEYGATE_INJECT_NATIVE_SIDECAR=%s, want %v", mounted, nativeMode, nativeMode == "auto")
	}
	if sa, _ := r.find("ServiceAccount", dep.Spec.Template.Spec.ServiceAccountName).(*corev1.ServiceAccount); sa == nil {
		t.Errorf("ServiceAccount %q not in the build", dep.Spec.Template.Spec.ServiceAccountName)
	}
	for _, o := range r.objects {
		if o.kind == "Role" || o.kind == "ClusterRole" || o.kind == "RoleBinding" || o.kind == "ClusterRoleBinding" {
			t.Errorf("%s %s: the injector needs no RBAC (GET /version is system:public-info-viewer)", o.kind, o.name)
		}
	}
	if len(c.Args) != 1 || c.Args[0] != "inject" {
		t.Errorf("injector args %v, want [inject]", c.Args)
	}
	spec := dep.Spec.Template.Spec
	checkHardened(t, &spec, spec.Containers)
}

// checkHardened asserts non-root, read-only root file system, no capabilities
// and resource requests and limits on every container.
func checkHardened(t *testing.T, spec *corev1.PodSpec, containers []corev1.Container) {
	t.Helper()
	psc := spec.SecurityContext
	for _, c := range containers {
		sc := c.SecurityContext
		nonRoot := (sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
		if !nonRoot {
			t.Errorf("container %s may run as root", c.Name)
		}
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: root file system not read-only", c.Name)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: privilege escalation allowed", c.Name)
		}
		if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("container %s: capabilities not all dropped", c.Name)
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[res]; !ok {
				t.Errorf("container %s: no %s request", c.Name, res)
			}
			if _, ok := c.Resources.Limits[res]; !ok {
				t.Errorf("container %s: no %s limit", c.Name, res)
			}
		}
	}
}

// resolveTargetPort follows the endpoints controller: a named targetPort is
// looked up in the regular containers first, then in sidecars (init
// containers with restartPolicy Always).
func resolveTargetPort(pod *corev1.Pod, tp intstr.IntOrString) (int32, bool) {
	if tp.Type == intstr.Int {
		return tp.IntVal, true
	}
	for _, c := range pod.Spec.Containers {
		if p, ok := resolveContainerPort(&c, tp); ok {
			return p, true
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			if p, ok := resolveContainerPort(&c, tp); ok {
				return p, true
			}
		}
	}
	return 0, false
}

func resolveContainerPort(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func hasPort(c *corev1.Container, port int32) bool {
	for _, p := range c.Ports {
		if p.ContainerPort == port {
			return true
		}
	}
	return false
}

// checkGracePeriod: the pod's terminationGracePeriodSeconds covers the
// longest preStop hook of the app's containers (they run before keygate is
// signalled: a native sidecar is stopped after the containers, and in the
// classic layout the app's hook is what the endpoint removal waits on) plus
// keygate's drain, KEYGATE_SHUTDOWN_TIMEOUT (25s when unset), which must be
// set explicitly so that it cannot drift from the grace period.
func checkGracePeriod(t *testing.T, spec *corev1.PodSpec, kg *corev1.Container) {
	t.Helper()
	drain := 25 * time.Second
	var delay time.Duration
	found := false
	for _, e := range kg.Env {
		switch e.Name {
		case "KEYGATE_SHUTDOWN_TIMEOUT":
			d, err := time.ParseDuration(e.Value)
			if err != nil {
				t.Errorf("KEYGATE_SHUTDOWN_TIMEOUT %q: %v", e.Value, err)
			}
			drain, found = d, true
		case "KEYGATE_SHUTDOWN_DELAY":
			d, err := time.ParseDuration(e.Value)
			if err != nil {
				t.Errorf("KEYGATE_SHUTDOWN_DELAY %q: %v", e.Value, err)
			}
			delay = d
		}
	}
	// A classic second container is signalled with the app: it must keep
	// serving through the endpoint removal itself.
	if kg.RestartPolicy == nil && delay == 0 {
		t.Error("keygate as a classic container has no KEYGATE_SHUTDOWN_DELAY: requests routed during the endpoint removal would be refused")
	}
	classic := kg.RestartPolicy == nil
	if !found {
		t.Error("keygate's KEYGATE_SHUTDOWN_TIMEOUT is not set next to terminationGracePeriodSeconds")
	}
	var preStop time.Duration
	for _, c := range spec.Containers {
		if c.Name == kg.Name || c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			continue
		}
		h := c.Lifecycle.PreStop
		switch {
		case h.Sleep != nil:
			preStop = max(preStop, time.Duration(h.Sleep.Seconds)*time.Second)
		case h.Exec != nil && len(h.Exec.Command) == 2 && h.Exec.Command[0] == "sleep":
			n, err := strconv.Atoi(h.Exec.Command[1])
			if err != nil {
				t.Errorf("container %s: preStop %v", c.Name, h.Exec.Command)
			}
			preStop = max(preStop, time.Duration(n)*time.Second)
		}
	}
	if preStop == 0 {
		t.Error("the app has no preStop delay: requests routed during the endpoint removal would be refused")
	}
	// A native sidecar is signalled after the app has exited (its preStop
	// included); a classic container at the same time as the app.
	need := preStop + delay + drain
	if classic {
		need = max(preStop, delay+drain)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= need {
		t.Errorf("terminationGracePeriodSeconds %v: want more than %s (app preStop %s, keygate delay %s and drain %s)", g, need, preStop, delay, drain)
	}
}
