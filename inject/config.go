package inject

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Labels and annotations read or written by the injector. They are part of the
// public contract (DESIGN.md, "Injector").
const (
	// LabelInject opts a namespace in with "enabled" (the webhook's
	// namespaceSelector) and a pod in with "true".
	LabelInject = "keygate.io/inject"

	AnnotationUpstreamPort  = "keygate.io/upstream-port"
	AnnotationListenPort    = "keygate.io/listen-port"
	AnnotationMetricsPort   = "keygate.io/metrics-port"
	AnnotationFailureMode   = "keygate.io/failure-mode"
	AnnotationRoutes        = "keygate.io/routes-configmap"
	AnnotationNativeSidecar = "keygate.io/native-sidecar"
	AnnotationCPURequest    = "keygate.io/cpu-request"
	AnnotationMemoryRequest = "keygate.io/memory-request"
	AnnotationCPULimit      = "keygate.io/cpu-limit"
	AnnotationMemoryLimit   = "keygate.io/memory-limit"

	// AnnotationMode is proxy (the default: keygate takes over the pod's
	// serving port and forwards to the app) or authz (keygate is an
	// authorization service beside the pod's own proxy, which asks it about
	// each request; no port is taken over). AnnotationAuthzPort and
	// AnnotationAuthzGRPCPort move its two authorization listeners.
	AnnotationMode          = "keygate.io/mode"
	AnnotationAuthzPort     = "keygate.io/authz-port"
	AnnotationAuthzGRPCPort = "keygate.io/authz-grpc-port"

	// AnnotationStatus marks a pod the injector has patched, so a re-invocation
	// (reinvocationPolicy: IfNeeded) adds nothing.
	AnnotationStatus = "keygate.io/status"
	StatusInjected   = "injected"

	// ContainerName is the name of the added container.
	ContainerName = "keygate"
)

// Values of AnnotationMode.
const (
	ModeProxy = "proxy"
	ModeAuthz = "authz"
)

// Defaults of the added container; each can be changed per pod by annotation.
const (
	// DefaultAuthzPort (HTTP: nginx auth_request, Traefik ForwardAuth,
	// Envoy's HTTP ext_authz) and DefaultAuthzGRPCPort (Envoy's gRPC
	// ext_authz) are where keygate listens in authz mode.
	DefaultAuthzPort     = 9002
	DefaultAuthzGRPCPort = 9001

	DefaultListenPort  = 8000
	DefaultMetricsPort = 9090
	// adminPort is KEYGATE_ADMIN_ADDR's port; it is bound on 127.0.0.1 inside the
	// pod, so the listen port must not take it.
	adminPort = 9091

	// RoutesMountPath is where the routes ConfigMap is mounted; its key
	// RoutesKey becomes KEYGATE_ROUTES_FILE.
	RoutesMountPath = "/etc/keygate/routes"
	RoutesKey       = "routes.yaml"

	routesVolume      = "keygate-routes"
	metricsPortName   = "keygate-metrics"
	authzPortName     = "keygate-authz"
	authzGRPCPortName = "keygate-grpc"
	defaultPortName   = "keygate"
	defaultCPUReq     = "50m"
	defaultMemReq     = "64Mi"
	defaultCPULimit   = "500m"
	defaultMemLimit   = "128Mi"
	nonRootUID        = 65532
	kubeSystem        = "kube-system"
	defaultInjectAddr = ":8443"
)

// Config is what the injector needs to build a sidecar. The zero value is not
// usable: Image and ConfigSecret are required (see Validate).
type Config struct {
	// Image is the keygate image added to pods (KEYGATE_INJECT_IMAGE).
	Image string
	// ConfigSecret names the Secret, in the pod's namespace, whose keys become
	// the sidecar's environment (KEYGATE_INJECT_CONFIG_SECRET).
	ConfigSecret string
	// Namespace is the injector's own namespace; pods there are never patched,
	// so the injector cannot block its own restart (KEYGATE_INJECT_NAMESPACE).
	Namespace string
	// NativeSidecar adds keygate as an init container with restartPolicy
	// Always (Kubernetes >= 1.29) instead of a second container; a pod can
	// override it with the keygate.io/native-sidecar annotation.
	NativeSidecar bool
	// NativeSidecarFunc, when set, replaces NativeSidecar: Mutate calls it
	// once per opted-in pod without the annotation. Run sets it with KEYGATE_INJECT_NATIVE_SIDECAR=auto to the
	// answer learned from the API server's version, which it refreshes.
	NativeSidecarFunc func() bool
	// ImagePullPolicy of the added container; empty lets the API server default it.
	ImagePullPolicy string
}

// nativeDefault is the sidecar mode of a pod without the
// keygate.io/native-sidecar annotation.
func (c Config) nativeDefault() bool {
	if c.NativeSidecarFunc != nil {
		return c.NativeSidecarFunc()
	}
	return c.NativeSidecar
}

// Validate reports the first missing or malformed field, naming its variable.
func (c Config) Validate() error {
	if c.Image == "" {
		return errors.New("KEYGATE_INJECT_IMAGE is required")
	}
	if c.ConfigSecret == "" {
		return errors.New("KEYGATE_INJECT_CONFIG_SECRET is required")
	}
	if errs := validation.IsDNS1123Subdomain(c.ConfigSecret); len(errs) > 0 {
		return fmt.Errorf("KEYGATE_INJECT_CONFIG_SECRET %q: %s", c.ConfigSecret, strings.Join(errs, "; "))
	}
	switch c.ImagePullPolicy {
	case "", "Always", "IfNotPresent", "Never":
	default:
		return fmt.Errorf("KEYGATE_INJECT_IMAGE_PULL_POLICY %q: want Always, IfNotPresent or Never", c.ImagePullPolicy)
	}
	return nil
}

// serverConfig is Config plus what only Run needs.
type serverConfig struct {
	Config
	Addr     string
	CertFile string
	KeyFile  string
	// NativeMode is KEYGATE_INJECT_NATIVE_SIDECAR: auto, true or false. With
	// true or false Config.NativeSidecar is set; with auto Run asks KubeAPI.
	NativeMode string
	KubeAPI    kubeAPI
}

// configFromEnv reads the KEYGATE_INJECT_* variables through getenv, so tests
// pass a map instead of touching the process environment.
func configFromEnv(getenv func(string) string) (serverConfig, error) {
	sc := serverConfig{
		Config: Config{
			Image:           getenv("KEYGATE_INJECT_IMAGE"),
			ConfigSecret:    getenv("KEYGATE_INJECT_CONFIG_SECRET"),
			Namespace:       getenv("KEYGATE_INJECT_NAMESPACE"),
			ImagePullPolicy: getenv("KEYGATE_INJECT_IMAGE_PULL_POLICY"),
		},
		Addr:     getenv("KEYGATE_INJECT_ADDR"),
		CertFile: getenv("KEYGATE_INJECT_TLS_CERT"),
		KeyFile:  getenv("KEYGATE_INJECT_TLS_KEY"),
	}
	if sc.Addr == "" {
		sc.Addr = defaultInjectAddr
	}
	var err error
	if sc.NativeMode, err = parseNativeMode(getenv("KEYGATE_INJECT_NATIVE_SIDECAR")); err != nil {
		return serverConfig{}, err
	}
	sc.NativeSidecar = sc.NativeMode == modeNative
	if sc.KubeAPI, err = kubeAPIFromEnv(getenv); err != nil {
		return serverConfig{}, err
	}
	if sc.CertFile == "" {
		return serverConfig{}, errors.New("KEYGATE_INJECT_TLS_CERT is required")
	}
	if sc.KeyFile == "" {
		return serverConfig{}, errors.New("KEYGATE_INJECT_TLS_KEY is required")
	}
	if err := sc.Validate(); err != nil {
		return serverConfig{}, err
	}
	return sc, nil
}

// podSettings are the per-pod choices, read from the pod's annotations.
type podSettings struct {
	mode          string // ModeProxy or ModeAuthz
	upstream      string // port number or container port name; empty = guess
	listenPort    int32
	metricsPort   int32
	authzPort     int32 // authz mode only
	authzGRPCPort int32 // authz mode only
	failureMode   string
	routes        string
	nativeSidecar bool
	requests      map[string]resource.Quantity
	limits        map[string]resource.Quantity
}

// settingsFrom parses the pod's annotations, falling back to cfg and the
// defaults. A malformed annotation is an error naming it: the pod is refused
// rather than run with a sidecar it did not ask for.
func settingsFrom(cfg Config, ann map[string]string) (podSettings, error) {
	s := podSettings{
		mode:        ModeProxy,
		upstream:    strings.TrimSpace(ann[AnnotationUpstreamPort]),
		listenPort:  DefaultListenPort,
		metricsPort: DefaultMetricsPort,
		routes:      strings.TrimSpace(ann[AnnotationRoutes]),
	}
	if v, ok := ann[AnnotationMode]; ok {
		switch v {
		case ModeProxy, ModeAuthz:
			s.mode = v
		default:
			return podSettings{}, fmt.Errorf("annotation %s=%q: want %s (keygate in front of the app, the default) or %s (keygate as an authorization service beside the pod's own proxy)",
				AnnotationMode, v, ModeProxy, ModeAuthz)
		}
	}
	var err error
	if s.authzPort, err = portAnnotation(ann, AnnotationAuthzPort, DefaultAuthzPort); err != nil {
		return podSettings{}, err
	}
	if s.authzGRPCPort, err = portAnnotation(ann, AnnotationAuthzGRPCPort, DefaultAuthzGRPCPort); err != nil {
		return podSettings{}, err
	}
	if s.listenPort, err = portAnnotation(ann, AnnotationListenPort, DefaultListenPort); err != nil {
		return podSettings{}, err
	}
	if s.metricsPort, err = portAnnotation(ann, AnnotationMetricsPort, DefaultMetricsPort); err != nil {
		return podSettings{}, err
	}
	if v, ok := ann[AnnotationFailureMode]; ok {
		switch v {
		case "open", "closed":
			s.failureMode = v
		default:
			return podSettings{}, fmt.Errorf("annotation %s=%q: want open or closed", AnnotationFailureMode, v)
		}
	}
	if s.routes != "" {
		if errs := validation.IsDNS1123Subdomain(s.routes); len(errs) > 0 {
			return podSettings{}, fmt.Errorf("annotation %s=%q: not a ConfigMap name: %s", AnnotationRoutes, s.routes, strings.Join(errs, "; "))
		}
	}
	if v, ok := ann[AnnotationNativeSidecar]; ok {
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			return podSettings{}, fmt.Errorf("annotation %s=%q: want true or false", AnnotationNativeSidecar, v)
		}
		s.nativeSidecar = b
	} else {
		s.nativeSidecar = cfg.nativeDefault()
	}
	if s.requests, err = quantities(ann, AnnotationCPURequest, defaultCPUReq, AnnotationMemoryRequest, defaultMemReq); err != nil {
		return podSettings{}, err
	}
	if s.limits, err = quantities(ann, AnnotationCPULimit, defaultCPULimit, AnnotationMemoryLimit, defaultMemLimit); err != nil {
		return podSettings{}, err
	}
	for _, r := range []string{"cpu", "memory"} {
		req, lim := s.requests[r], s.limits[r]
		if req.Cmp(lim) > 0 {
			return podSettings{}, fmt.Errorf("keygate %s request %s is above its limit %s", r, req.String(), lim.String())
		}
	}
	return s, nil
}

func portAnnotation(ann map[string]string, key string, def int32) (int32, error) {
	v, ok := ann[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("annotation %s=%q: want a port number 1-65535", key, v)
	}
	return int32(n), nil
}

func quantities(ann map[string]string, cpuKey, cpuDef, memKey, memDef string) (map[string]resource.Quantity, error) {
	out := make(map[string]resource.Quantity, 2)
	for _, q := range []struct{ res, key, def string }{{"cpu", cpuKey, cpuDef}, {"memory", memKey, memDef}} {
		v := q.def
		if a, ok := ann[q.key]; ok {
			v = strings.TrimSpace(a)
		}
		qty, err := resource.ParseQuantity(v)
		if err != nil || qty.Sign() <= 0 {
			return nil, fmt.Errorf("annotation %s=%q: want a positive quantity such as %s", q.key, v, q.def)
		}
		out[q.res] = qty
	}
	return out, nil
}
