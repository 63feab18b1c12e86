package inject

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
)

// Op is one RFC 6902 JSON Patch operation, the only patch type AdmissionReview v1 accepts.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Mutate decides what to do with one admission request. It returns the patch
// that adds keygate, or no operations when the pod is not ours to change (not a
// pod creation, not opted in, already injected, a protected namespace). An
// error means the pod opted in but cannot be injected as asked; the caller
// refuses the pod with the error's text, since admitting it without keygate
// would expose the backend without authentication.
//
// Mutate is pure: it reads nothing but its arguments. cfg.NativeSidecarFunc,
// when set, is called once for an opted-in pod without the
// keygate.io/native-sidecar annotation; Run's is an atomic load of the answer
// its API server version detector keeps.
func Mutate(cfg Config, req *admissionv1.AdmissionRequest) ([]Op, error) {
	if req == nil {
		return nil, errors.New("admission review has no request")
	}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" || req.Operation != admissionv1.Create {
		return nil, nil
	}
	if req.Namespace == kubeSystem || (cfg.Namespace != "" && req.Namespace == cfg.Namespace) {
		return nil, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("injector misconfigured: %w", err)
	}
	if len(req.Object.Raw) == 0 {
		return nil, errors.New("admission request carries no pod")
	}
	// Field names are matched case-sensitively, as the API server decodes
	// objects and as the patch's paths are applied: encoding/json would read
	// "Metadata" as metadata and patch a path the object does not have.
	var pod corev1.Pod
	if err := kjson.UnmarshalCaseSensitivePreserveInts(req.Object.Raw, &pod); err != nil {
		return nil, fmt.Errorf("decode pod: %w", err)
	}
	if pod.Labels[LabelInject] != "true" {
		return nil, nil
	}
	if pod.Annotations[AnnotationStatus] == StatusInjected || hasContainer(&pod.Spec, ContainerName) {
		return nil, nil
	}
	if pod.Spec.HostNetwork {
		return nil, errors.New("hostNetwork pods cannot get a keygate sidecar: its ports would be bound on the node")
	}
	s, err := settingsFrom(cfg, pod.Annotations)
	if err != nil {
		return nil, err
	}
	var up upstream
	if s.mode == ModeAuthz {
		if err := checkAuthzPorts(&pod.Spec, s); err != nil {
			return nil, err
		}
	} else {
		if up, err = findUpstream(&pod.Spec, s.upstream); err != nil {
			return nil, err
		}
		if err := checkPorts(&pod.Spec, s, up); err != nil {
			return nil, err
		}
	}

	var ops []Op
	if pod.Annotations == nil {
		ops = append(ops, Op{Op: "add", Path: "/metadata/annotations", Value: map[string]string{AnnotationStatus: StatusInjected}})
	} else {
		ops = append(ops, Op{Op: "add", Path: "/metadata/annotations/" + escape(AnnotationStatus), Value: StatusInjected})
	}
	dataPortName := defaultPortName
	if up.found && up.name != "" {
		// Hand the name over to keygate: a Service whose targetPort is this name
		// then reaches keygate, which forwards to the app on loopback.
		dataPortName = up.name
		ops = append(ops, releasePortName(&pod.Spec.Containers[up.container], up)...)
	}
	if s.routes != "" {
		for _, v := range pod.Spec.Volumes {
			if v.Name == routesVolume {
				return nil, fmt.Errorf("pod already has a volume named %s, which keygate needs for annotation %s", routesVolume, AnnotationRoutes)
			}
		}
		vol := corev1.Volume{
			Name: routesVolume,
			VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: s.routes},
				Items:                []corev1.KeyToPath{{Key: RoutesKey, Path: RoutesKey}},
			}},
		}
		ops = append(ops, appendOp("/spec/volumes", len(pod.Spec.Volumes), vol))
	}
	var c corev1.Container
	if s.mode == ModeAuthz {
		c = authzSidecar(cfg, s)
	} else {
		c = sidecar(cfg, s, up.port, dataPortName)
	}
	if s.nativeSidecar {
		ops = append(ops, appendOp("/spec/initContainers", len(pod.Spec.InitContainers), c))
	} else {
		ops = append(ops, appendOp("/spec/containers", len(pod.Spec.Containers), c))
	}
	return ops, nil
}

// upstream is the app's serving port as found in the pod.
type upstream struct {
	port      int32
	name      string
	protocol  corev1.Protocol
	found     bool // declared as a container port; container and index are valid
	container int
	index     int
}

// findUpstream resolves keygate.io/upstream-port (a number or a container port
// name). Without the annotation it takes the port named "http", or the pod's
// only declared port; anything else is ambiguous and refused.
func findUpstream(spec *corev1.PodSpec, want string) (upstream, error) {
	var all []upstream
	for ci, c := range spec.Containers {
		for pi, p := range c.Ports {
			all = append(all, upstream{port: p.ContainerPort, name: p.Name, protocol: p.Protocol, found: true, container: ci, index: pi})
		}
	}
	u, err := pickUpstream(all, want)
	if err != nil {
		return upstream{}, err
	}
	if u.protocol != "" && u.protocol != corev1.ProtocolTCP {
		return upstream{}, fmt.Errorf("upstream port %d is %s: keygate proxies HTTP over TCP only", u.port, u.protocol)
	}
	return u, nil
}

func pickUpstream(all []upstream, want string) (upstream, error) {
	if want != "" {
		if n, err := strconv.ParseInt(want, 10, 32); err == nil {
			if n < 1 || n > 65535 {
				return upstream{}, fmt.Errorf("annotation %s=%q: want a port number 1-65535 or a container port name", AnnotationUpstreamPort, want)
			}
			for _, u := range all {
				if u.port == int32(n) {
					return u, nil
				}
			}
			// Not declared: the app may listen without declaring the port.
			return upstream{port: int32(n)}, nil
		}
		for _, u := range all {
			if u.name == want {
				return u, nil
			}
		}
		return upstream{}, fmt.Errorf("annotation %s=%q: no container port has that name", AnnotationUpstreamPort, want)
	}
	for _, u := range all {
		if u.name == "http" {
			return u, nil
		}
	}
	if len(all) == 1 {
		return all[0], nil
	}
	return upstream{}, fmt.Errorf("cannot tell which port keygate should guard (%d container ports, none named http): set annotation %s to a port number or name", len(all), AnnotationUpstreamPort)
}

// checkPorts refuses settings that would make two processes of the pod bind
// the same port: the pod shares one network namespace.
func checkPorts(spec *corev1.PodSpec, s podSettings, up upstream) error {
	mine := map[int32]string{
		s.listenPort:  AnnotationListenPort,
		s.metricsPort: AnnotationMetricsPort,
	}
	if s.listenPort == s.metricsPort {
		return fmt.Errorf("keygate listen port and metrics port are both %d", s.listenPort)
	}
	for p, what := range mine {
		if p == adminPort {
			return fmt.Errorf("%s %d is keygate's admin port: choose another", what, p)
		}
		if p == up.port {
			return fmt.Errorf("%s %d is also the upstream port: set annotation %s to a free port", what, p, what)
		}
	}
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			for _, p := range c.Ports {
				if what, ok := mine[p.ContainerPort]; ok {
					return fmt.Errorf("%s %d is already used by container %q: set annotation %s to a free port", what, p.ContainerPort, c.Name, what)
				}
				if p.Name == metricsPortName {
					return fmt.Errorf("container %q already has a port named %s", c.Name, metricsPortName)
				}
			}
		}
	}
	return nil
}

// releasePortName removes the name from the app's port, so the name resolves
// to keygate's port instead (the endpoints controller looks at containers
// before sidecars), and turns the container's own probes and lifecycle hooks
// that used the name into the number, so they still reach the app directly.
func releasePortName(c *corev1.Container, up upstream) []Op {
	base := "/spec/containers/" + strconv.Itoa(up.container)
	ops := []Op{{Op: "remove", Path: base + "/ports/" + strconv.Itoa(up.index) + "/name"}}
	num := intstr.FromInt32(up.port)
	named := func(p intstr.IntOrString) bool { return p.Type == intstr.String && p.StrVal == up.name }
	handler := func(path string, httpGet *corev1.HTTPGetAction, tcp *corev1.TCPSocketAction) {
		if httpGet != nil && named(httpGet.Port) {
			ops = append(ops, Op{Op: "replace", Path: path + "/httpGet/port", Value: num})
		}
		if tcp != nil && named(tcp.Port) {
			ops = append(ops, Op{Op: "replace", Path: path + "/tcpSocket/port", Value: num})
		}
	}
	for _, p := range []struct {
		field string
		probe *corev1.Probe
	}{{"livenessProbe", c.LivenessProbe}, {"readinessProbe", c.ReadinessProbe}, {"startupProbe", c.StartupProbe}} {
		if p.probe != nil {
			handler(base+"/"+p.field, p.probe.HTTPGet, p.probe.TCPSocket)
		}
	}
	if c.Lifecycle != nil {
		for _, h := range []struct {
			field string
			h     *corev1.LifecycleHandler
		}{{"postStart", c.Lifecycle.PostStart}, {"preStop", c.Lifecycle.PreStop}} {
			if h.h != nil {
				handler(base+"/lifecycle/"+h.field, h.h.HTTPGet, h.h.TCPSocket)
			}
		}
	}
	return ops
}

// sidecar builds the keygate container for one pod.
func sidecar(cfg Config, s podSettings, upstreamPort int32, dataPortName string) corev1.Container {
	env := []corev1.EnvVar{
		{Name: "KEYGATE_UPSTREAM_URL", Value: "http://127.0.0.1:" + strconv.Itoa(int(upstreamPort))},
		{Name: "KEYGATE_LISTEN_ADDR", Value: ":" + strconv.Itoa(int(s.listenPort))},
		{Name: "KEYGATE_METRICS_ADDR", Value: ":" + strconv.Itoa(int(s.metricsPort))},
	}
	if s.failureMode != "" {
		env = append(env, corev1.EnvVar{Name: "KEYGATE_FAILURE_MODE", Value: s.failureMode})
	}
	var mounts []corev1.VolumeMount
	if s.routes != "" {
		env = append(env, corev1.EnvVar{Name: "KEYGATE_ROUTES_FILE", Value: RoutesMountPath + "/" + RoutesKey})
		mounts = []corev1.VolumeMount{{Name: routesVolume, MountPath: RoutesMountPath, ReadOnly: true}}
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString(metricsPortName), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
			TimeoutSeconds:   1,
			SuccessThreshold: 1,
		}
	}
	uid := int64(nonRootUID)
	c := corev1.Container{
		Name:  ContainerName,
		Image: cfg.Image,
		Args:  []string{"serve"},
		Ports: []corev1.ContainerPort{
			{Name: dataPortName, ContainerPort: s.listenPort, Protocol: corev1.ProtocolTCP},
			{Name: metricsPortName, ContainerPort: s.metricsPort, Protocol: corev1.ProtocolTCP},
		},
		EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: cfg.ConfigSecret},
		}}},
		Env: env,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: s.requests["cpu"], corev1.ResourceMemory: s.requests["memory"]},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: s.limits["cpu"], corev1.ResourceMemory: s.limits["memory"]},
		},
		VolumeMounts: mounts,
		// The startup probe holds back the app's containers (native sidecar)
		// until keygate answers, so no request reaches the Service unguarded.
		StartupProbe:             probe("/healthz", 1, 30),
		LivenessProbe:            probe("/healthz", 10, 3),
		ReadinessProbe:           probe("/readyz", 5, 3),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		ImagePullPolicy:          corev1.PullPolicy(cfg.ImagePullPolicy),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	if s.nativeSidecar {
		always := corev1.ContainerRestartPolicyAlways
		c.RestartPolicy = &always
	}
	return c
}

// checkAuthzPorts refuses authz-mode settings that would make two processes
// of the pod bind the same port. keygate's data listener is then on a
// loopback port the kernel picks, so it cannot collide with anything.
func checkAuthzPorts(spec *corev1.PodSpec, s podSettings) error {
	mine := map[int32]string{
		s.authzPort:     AnnotationAuthzPort,
		s.authzGRPCPort: AnnotationAuthzGRPCPort,
		s.metricsPort:   AnnotationMetricsPort,
	}
	if len(mine) < 3 {
		return fmt.Errorf("keygate authz port %d, authz gRPC port %d and metrics port %d must differ", s.authzPort, s.authzGRPCPort, s.metricsPort)
	}
	for p, what := range mine {
		if p == adminPort {
			return fmt.Errorf("%s %d is keygate's admin port: choose another", what, p)
		}
	}
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			for _, p := range c.Ports {
				if what, ok := mine[p.ContainerPort]; ok {
					return fmt.Errorf("%s %d is already used by container %q: set annotation %s to a free port", what, p.ContainerPort, c.Name, what)
				}
				switch p.Name {
				case metricsPortName, authzPortName, authzGRPCPortName:
					return fmt.Errorf("container %q already has a port named %s", c.Name, p.Name)
				}
			}
		}
	}
	return nil
}

// authzSidecar is the keygate container of authz mode: the same container
// as the sidecar's, listening for authorization checks instead of taking
// over the app's port. It has no upstream; its data listener (the
// self-served routes) is bound to a loopback port the kernel picks, so that
// it takes no port the pod may use.
func authzSidecar(cfg Config, s podSettings) corev1.Container {
	c := sidecar(cfg, s, 0, "")
	env := []corev1.EnvVar{
		{Name: "KEYGATE_LISTEN_ADDR", Value: "127.0.0.1:0"},
		{Name: "KEYGATE_AUTHZ_ADDR", Value: ":" + strconv.Itoa(int(s.authzPort))},
		{Name: "KEYGATE_AUTHZ_GRPC_ADDR", Value: ":" + strconv.Itoa(int(s.authzGRPCPort))},
	}
	for _, e := range c.Env {
		if e.Name != "KEYGATE_UPSTREAM_URL" && e.Name != "KEYGATE_LISTEN_ADDR" {
			env = append(env, e)
		}
	}
	c.Env = env
	c.Ports = []corev1.ContainerPort{
		{Name: authzPortName, ContainerPort: s.authzPort, Protocol: corev1.ProtocolTCP},
		{Name: authzGRPCPortName, ContainerPort: s.authzGRPCPort, Protocol: corev1.ProtocolTCP},
		{Name: metricsPortName, ContainerPort: s.metricsPort, Protocol: corev1.ProtocolTCP},
	}
	return c
}

func hasContainer(spec *corev1.PodSpec, name string) bool {
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}

// appendOp adds v at the end of the array at path, creating the array when
// the pod has none (a JSON Patch "-" needs an existing array).
func appendOp(path string, n int, v any) Op {
	if n == 0 {
		return Op{Op: "add", Path: path, Value: []any{v}}
	}
	return Op{Op: "add", Path: path + "/-", Value: v}
}

// escape encodes one JSON Pointer reference token (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func ptr[T any](v T) *T { return &v }
