package deploytest

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	securityv1beta1 "istio.io/api/security/v1beta1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Where the authorization recipes expect keygate (deploy/kubernetes/authz):
// checkAuthzService holds the service to these, the recipe checks hold the
// recipes to them, so the two cannot drift apart.
const (
	authzHost     = "keygate-authz.keygate.svc.cluster.local"
	authzHTTPPort = 9002
	authzGRPCPort = 9001
)

// The identity headers keygate answers an admitted check with, and the
// credential headers that must not reach a backend (DESIGN.md, "Data path").
var (
	identityHeaders   = []string{"X-Keygate-Org-Id", "X-Keygate-Key-Id", "X-Keygate-Key-Name", "X-Keygate-Permissions"}
	credentialHeaders = []string{"X-Api-Key", "X-Access-Key", "X-Access-Secret", "X-Access-Signature", "Authorization"}
)

// middleware is the part of Traefik's traefik.io/v1alpha1 Middleware the
// recipes use, decoded strictly.
type middleware struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		ForwardAuth *struct {
			Address             string   `json:"address"`
			TrustForwardHeader  *bool    `json:"trustForwardHeader,omitempty"`
			AuthResponseHeaders []string `json:"authResponseHeaders,omitempty"`
			AuthRequestHeaders  []string `json:"authRequestHeaders,omitempty"`
		} `json:"forwardAuth,omitempty"`
		Headers *struct {
			CustomRequestHeaders map[string]string `json:"customRequestHeaders,omitempty"`
		} `json:"headers,omitempty"`
	} `json:"spec"`
}

// authorizationPolicy is Istio's security.istio.io/v1 AuthorizationPolicy as
// far as the recipe uses it.
type authorizationPolicy struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		Selector *struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector,omitempty"`
		Action   string `json:"action"`
		Provider *struct {
			Name string `json:"name"`
		} `json:"provider,omitempty"`
		Rules []struct {
			To []struct {
				Operation struct {
					Paths    []string `json:"paths,omitempty"`
					NotPaths []string `json:"notPaths,omitempty"`
					Methods  []string `json:"methods,omitempty"`
				} `json:"operation"`
			} `json:"to,omitempty"`
		} `json:"rules,omitempty"`
	} `json:"spec"`
}

type backendRef struct {
	Group     *string `json:"group,omitempty"`
	Kind      string  `json:"kind,omitempty"`
	Name      string  `json:"name"`
	Namespace string  `json:"namespace,omitempty"`
	Port      int     `json:"port,omitempty"`
}

// securityPolicy is Envoy Gateway's gateway.envoyproxy.io/v1alpha1
// SecurityPolicy as far as the recipe uses it.
type securityPolicy struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		TargetRefs []struct {
			Group string `json:"group"`
			Kind  string `json:"kind"`
			Name  string `json:"name"`
		} `json:"targetRefs"`
		ExtAuth *struct {
			FailOpen *bool `json:"failOpen,omitempty"`
			GRPC     *struct {
				BackendRefs []backendRef `json:"backendRefs"`
			} `json:"grpc,omitempty"`
		} `json:"extAuth,omitempty"`
	} `json:"spec"`
}

// referenceGrant is Gateway API's ReferenceGrant.
type referenceGrant struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		From []struct {
			Group     string `json:"group"`
			Kind      string `json:"kind"`
			Namespace string `json:"namespace"`
		} `json:"from"`
		To []struct {
			Group string `json:"group"`
			Kind  string `json:"kind"`
			Name  string `json:"name,omitempty"`
		} `json:"to"`
	} `json:"spec"`
}

// meshConfig is the part of Istio's MeshConfig the recipe sets: the
// extension providers (decoded strictly, field names as Istio's
// meshConfig.extensionProviders).
type meshConfig struct {
	ExtensionProviders []struct {
		Name              string `json:"name"`
		EnvoyExtAuthzGrpc *struct {
			Service       string `json:"service"`
			Port          int    `json:"port"`
			Timeout       string `json:"timeout,omitempty"`
			FailOpen      bool   `json:"failOpen"`
			StatusOnError string `json:"statusOnError,omitempty"`
		} `json:"envoyExtAuthzGrpc,omitempty"`
		EnvoyExtAuthzHTTP *struct {
			Service                      string   `json:"service"`
			Port                         int      `json:"port"`
			Timeout                      string   `json:"timeout,omitempty"`
			FailOpen                     bool     `json:"failOpen"`
			StatusOnError                string   `json:"statusOnError,omitempty"`
			IncludeRequestHeadersInCheck []string `json:"includeRequestHeadersInCheck,omitempty"`
			HeadersToUpstreamOnAllow     []string `json:"headersToUpstreamOnAllow,omitempty"`
			HeadersToDownstreamOnAllow   []string `json:"headersToDownstreamOnAllow,omitempty"`
			HeadersToDownstreamOnDeny    []string `json:"headersToDownstreamOnDeny,omitempty"`
		} `json:"envoyExtAuthzHttp,omitempty"`
	} `json:"extensionProviders"`
}

// checkAuthzService: keygate alone, listening for both kinds of checks on
// the ports the recipes use, with no upstream, behind a Service whose gRPC
// port speaks HTTP/2.
func checkAuthzService(t *testing.T, r rendered) {
	dep, _ := r.find("Deployment", "keygate-authz").(*appsv1.Deployment)
	svc, _ := r.find("Service", "keygate-authz").(*corev1.Service)
	if dep == nil || svc == nil {
		t.Fatalf("want Deployment and Service keygate-authz, got %v", r.objects)
	}
	if svc.Namespace != "keygate" || dep.Namespace != "keygate" {
		t.Errorf("namespaces %q %q, want keygate (the recipes name %s)", dep.Namespace, svc.Namespace, authzHost)
	}
	kg := dep.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range kg.Env {
		env[e.Name] = e.Value
	}
	if _, ok := env["KEYGATE_UPSTREAM_URL"]; ok {
		t.Error("the authorization service has an upstream")
	}
	for name, port := range map[string]int{"KEYGATE_AUTHZ_ADDR": authzHTTPPort, "KEYGATE_AUTHZ_GRPC_ADDR": authzGRPCPort} {
		if env[name] != ":"+strconv.Itoa(port) {
			t.Errorf("%s = %q, want :%d", name, env[name], port)
		}
	}
	pod := &corev1.Pod{Spec: dep.Spec.Template.Spec}
	for _, p := range svc.Spec.Ports {
		target, ok := resolveTargetPort(pod, p.TargetPort)
		switch int(p.Port) {
		case authzHTTPPort, authzGRPCPort:
			if !ok || int(target) != int(p.Port) {
				t.Errorf("Service port %d reaches %d (%v)", p.Port, target, ok)
			}
		}
		if int(p.Port) == authzGRPCPort && (p.AppProtocol == nil || *p.AppProtocol != "kubernetes.io/h2c" || !strings.HasPrefix(p.Name, "grpc")) {
			t.Errorf("gRPC port %+v: want appProtocol kubernetes.io/h2c and a grpc- name", p)
		}
	}
	rp := kg.ReadinessProbe
	if rp == nil || rp.GRPC == nil || int(rp.GRPC.Port) != authzGRPCPort || rp.GRPC.Service == nil || *rp.GRPC.Service != "envoy.service.auth.v3.Authorization" {
		t.Errorf("readiness probe %+v: want the gRPC health of the Authorization service", rp)
	}
	checkHardened(t, &dep.Spec.Template.Spec, dep.Spec.Template.Spec.Containers)
}

// checkTraefikRecipe: ForwardAuth to keygate's HTTP port, not trusting the
// client's X-Forwarded-*, copying every identity header; a second
// middleware removes every credential header.
func checkTraefikRecipe(t *testing.T, r rendered) {
	auth, _ := r.find("Middleware", "keygate-auth").(*middleware)
	strip, _ := r.find("Middleware", "keygate-strip-credentials").(*middleware)
	if auth == nil || strip == nil || auth.Spec.ForwardAuth == nil || strip.Spec.Headers == nil {
		t.Fatalf("want Middlewares keygate-auth (forwardAuth) and keygate-strip-credentials (headers), got %v", r.objects)
	}
	fa := auth.Spec.ForwardAuth
	if want := "http://" + authzHost + ":" + strconv.Itoa(authzHTTPPort) + "/"; fa.Address != want {
		t.Errorf("address %q, want %q", fa.Address, want)
	}
	if fa.TrustForwardHeader == nil || *fa.TrustForwardHeader {
		t.Error("trustForwardHeader must be false: a client could claim another X-Forwarded-Uri")
	}
	if !slices.Equal(fa.AuthResponseHeaders, identityHeaders) {
		t.Errorf("authResponseHeaders %v, want %v", fa.AuthResponseHeaders, identityHeaders)
	}
	for _, h := range credentialHeaders {
		if v, ok := strip.Spec.Headers.CustomRequestHeaders[h]; !ok || v != "" {
			t.Errorf("credential header %s is not removed", h)
		}
	}
}

// checkIstioRecipe: the mesh config's providers reach keygate's ports and
// refuse when keygate cannot be reached; the policy is CUSTOM with one of
// them.
func checkIstioRecipe(t *testing.T, r rendered) {
	cm, _ := r.find("ConfigMap", "istio").(*corev1.ConfigMap)
	pol, _ := r.find("AuthorizationPolicy", "keygate").(*authorizationPolicy)
	if cm == nil || pol == nil {
		t.Fatalf("want ConfigMap istio and AuthorizationPolicy keygate, got %v", r.objects)
	}
	if cm.Namespace != "istio-system" {
		t.Errorf("mesh config in namespace %q", cm.Namespace)
	}
	var mc meshConfig
	if err := yaml.UnmarshalStrict([]byte(cm.Data["mesh"]), &mc); err != nil {
		t.Fatalf("data.mesh is not a mesh config of extension providers: %v", err)
	}
	names := map[string]bool{}
	for _, p := range mc.ExtensionProviders {
		names[p.Name] = true
		switch {
		case p.EnvoyExtAuthzGrpc != nil:
			g := p.EnvoyExtAuthzGrpc
			if g.Service != authzHost || g.Port != authzGRPCPort || g.FailOpen || g.StatusOnError != "503" {
				t.Errorf("gRPC provider %s: %+v", p.Name, g)
			}
		case p.EnvoyExtAuthzHTTP != nil:
			h := p.EnvoyExtAuthzHTTP
			if h.Service != authzHost || h.Port != authzHTTPPort || h.FailOpen || h.StatusOnError != "503" {
				t.Errorf("HTTP provider %s: %+v", p.Name, h)
			}
			for _, c := range credentialHeaders {
				if !slices.Contains(h.IncludeRequestHeadersInCheck, strings.ToLower(c)) {
					t.Errorf("HTTP provider does not send %s to keygate", c)
				}
			}
			for _, c := range identityHeaders {
				if !slices.Contains(h.HeadersToUpstreamOnAllow, strings.ToLower(c)) {
					t.Errorf("HTTP provider does not forward %s", c)
				}
			}
			if !slices.Contains(h.HeadersToDownstreamOnDeny, "retry-after") {
				t.Error("HTTP provider drops Retry-After from denials")
			}
		default:
			t.Errorf("provider %s is neither envoyExtAuthzGrpc nor envoyExtAuthzHttp", p.Name)
		}
	}
	if len(mc.ExtensionProviders) != 2 {
		t.Errorf("%d providers, want the gRPC and the HTTP one", len(mc.ExtensionProviders))
	}
	if pol.Spec.Action != "CUSTOM" || pol.Spec.Provider == nil || !names[pol.Spec.Provider.Name] || pol.Spec.Selector == nil {
		t.Errorf("policy %+v: want action CUSTOM, a selector and a provider of the mesh config", pol.Spec)
	}
}

// checkEnvoyGatewayRecipe: extAuth over gRPC to keygate's Service, closed
// on failure, with the ReferenceGrant that allows the cross-namespace
// reference.
func checkEnvoyGatewayRecipe(t *testing.T, r rendered) {
	sp, _ := r.find("SecurityPolicy", "keygate").(*securityPolicy)
	rg, _ := r.find("ReferenceGrant", "keygate-authz-from-shop").(*referenceGrant)
	if sp == nil || rg == nil || sp.Spec.ExtAuth == nil || sp.Spec.ExtAuth.GRPC == nil || len(sp.Spec.ExtAuth.GRPC.BackendRefs) != 1 {
		t.Fatalf("want SecurityPolicy keygate with one gRPC backend and ReferenceGrant keygate-authz-from-shop, got %v", r.objects)
	}
	ea := sp.Spec.ExtAuth
	if ea.FailOpen == nil || *ea.FailOpen {
		t.Error("failOpen must be false")
	}
	b := ea.GRPC.BackendRefs[0]
	if host := b.Name + "." + b.Namespace + ".svc.cluster.local"; host != authzHost || b.Port != authzGRPCPort || b.Kind != "Service" {
		t.Errorf("backend %+v, want Service %s port %d", b, authzHost, authzGRPCPort)
	}
	if len(rg.Spec.From) != 1 || rg.Spec.From[0].Namespace != sp.Metadata.Namespace || rg.Spec.From[0].Kind != "SecurityPolicy" ||
		rg.Metadata.Namespace != b.Namespace || len(rg.Spec.To) != 1 || rg.Spec.To[0].Name != b.Name {
		t.Errorf("ReferenceGrant %+v does not allow the policy in %s to reach %s/%s", rg, sp.Metadata.Namespace, b.Namespace, b.Name)
	}
	if len(sp.Spec.TargetRefs) != 1 || sp.Spec.TargetRefs[0].Kind != "HTTPRoute" {
		t.Errorf("targetRefs %+v", sp.Spec.TargetRefs)
	}
}

// TestIstioRecipeByIstioProtos decodes the mesh config's extension
// providers and the AuthorizationPolicy's spec with Istio's own protos
// (istio.io/api), which refuse a field Istio does not know.
func TestIstioRecipeByIstioProtos(t *testing.T) {
	var r rendered
	for _, x := range renderAll(t) {
		if x.dir == "authz/istio" {
			r = x
		}
	}
	cm, _ := r.find("ConfigMap", "istio").(*corev1.ConfigMap)
	if cm == nil {
		t.Fatal("no mesh config")
	}
	js, err := yaml.YAMLToJSON([]byte(cm.Data["mesh"]))
	if err != nil {
		t.Fatal(err)
	}
	var mc meshv1alpha1.MeshConfig
	if err := protojson.Unmarshal(js, &mc); err != nil {
		t.Fatalf("mesh config by Istio's MeshConfig: %v", err)
	}
	if len(mc.GetExtensionProviders()) != 2 || mc.GetExtensionProviders()[0].GetEnvoyExtAuthzGrpc().GetService() != authzHost {
		t.Errorf("providers %v", mc.GetExtensionProviders())
	}
	for _, o := range r.objects {
		if o.kind != "AuthorizationPolicy" {
			continue
		}
		var obj struct {
			Spec json.RawMessage `json:"spec"`
		}
		if err := yaml.Unmarshal(o.doc, &obj); err != nil {
			t.Fatal(err)
		}
		var ap securityv1beta1.AuthorizationPolicy
		if err := protojson.Unmarshal(obj.Spec, &ap); err != nil {
			t.Fatalf("AuthorizationPolicy spec by Istio's proto: %v", err)
		}
		if ap.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM || ap.GetProvider().GetName() != "keygate-grpc" {
			t.Errorf("policy %v", &ap)
		}
	}
	// The protos are strict: a misspelt provider field is refused.
	if err := protojson.Unmarshal([]byte(`{"extensionProviders":[{"name":"x","envoyExtAuthzGrpc":{"servce":"x","port":9001}}]}`), &mc); err == nil {
		t.Error("a misspelt field was accepted")
	}
}
