package deploytest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"
)

// repoRoot is the main module's directory, seen from this package.
const repoRoot = "../.."

var manifestsDir = filepath.Join(repoRoot, "deploy", "kubernetes")

// crdKinds are the kinds the manifests use that k8s.io/api does not define.
// Each is decoded strictly into a local struct covering only the fields keygate
// uses, so a misspelt field still fails; the e2e test also sends them to a
// real API server (as CRDs without a schema).
var crdKinds = map[schema.GroupVersionKind]func() any{
	{Group: "cert-manager.io", Version: "v1", Kind: "Issuer"}:               func() any { return &issuer{} },
	{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"}:          func() any { return &certificate{} },
	{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}: func() any { return &serviceMonitor{} },
	// The authorization recipes (authz_test.go); the e2e test sends them to
	// the API server with structural CRDs (testdata/crds).
	{Group: "traefik.io", Version: "v1alpha1", Kind: "Middleware"}:                   func() any { return &middleware{} },
	{Group: "security.istio.io", Version: "v1", Kind: "AuthorizationPolicy"}:         func() any { return &authorizationPolicy{} },
	{Group: "gateway.envoyproxy.io", Version: "v1alpha1", Kind: "SecurityPolicy"}:    func() any { return &securityPolicy{} },
	{Group: "gateway.networking.k8s.io", Version: "v1beta1", Kind: "ReferenceGrant"}: func() any { return &referenceGrant{} },
}

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type issuer struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

type certificate struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		SecretName  string   `json:"secretName"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		DNSNames    []string `json:"dnsNames"`
		IsCA        bool     `json:"isCA,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Kind  string `json:"kind"`
			Name  string `json:"name"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

type serviceMonitor struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path,omitempty"`
			Interval string `json:"interval,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// routeRule is one entry of KEYGATE_ROUTES_FILE, mirroring proxy.Rule (the
// proxy package is not imported, so this module's go.mod does not have to
// follow the main module's dependencies).
type routeRule struct {
	Method     string `json:"method"`
	Path       string `json:"path"`
	Permission string `json:"permission,omitempty"`
	Cost       *int64 `json:"cost,omitempty"`
}

// jsonPatchOp is one RFC 6902 operation in a kustomize patch file.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	From  string `json:"from,omitempty"`
	Value any    `json:"value,omitempty"`
}

// splitYAML returns the non-empty documents of a multi-document YAML stream.
func splitYAML(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for range 1000 {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
	return nil, errors.New("more than 1000 YAML documents")
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// decodeObject decodes one Kubernetes object strictly: unknown or duplicate
// fields are errors. Kinds of k8s.io/api come from client-go's scheme; the few
// CRD kinds from crdKinds. It returns the typed object.
func decodeObject(doc []byte) (any, schema.GroupVersionKind, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, schema.GroupVersionKind{}, fmt.Errorf("read apiVersion and kind: %w", err)
	}
	if tm.APIVersion == "" || tm.Kind == "" {
		return nil, schema.GroupVersionKind{}, errors.New("document has no apiVersion or kind")
	}
	gv, err := schema.ParseGroupVersion(tm.APIVersion)
	if err != nil {
		return nil, schema.GroupVersionKind{}, err
	}
	gvk := gv.WithKind(tm.Kind)
	var obj any
	if mk, ok := crdKinds[gvk]; ok {
		obj = mk()
	} else {
		o, err := scheme.Scheme.New(gvk)
		if err != nil {
			return nil, gvk, fmt.Errorf("%s is not a k8s.io/api type: %w", gvk, err)
		}
		obj = o
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, gvk, fmt.Errorf("strict decode of %s: %w", gvk.Kind, err)
	}
	return obj, gvk, nil
}

// manifestFiles lists every YAML file under deploy/kubernetes.
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(manifestsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	if len(files) == 0 {
		t.Fatalf("no YAML files under %s", manifestsDir)
	}
	return files
}

// TestManifestsDecodeStrictly decodes every YAML file under deploy/kubernetes
// into its Go type with unknown fields rejected: Kubernetes objects into
// k8s.io/api types, kustomization files into kustomize's types, route files
// into the routes format, JSON patches into RFC 6902 operations.
func TestManifestsDecodeStrictly(t *testing.T) {
	for _, file := range manifestFiles(t) {
		rel, _ := filepath.Rel(manifestsDir, file)
		t.Run(rel, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			switch base := filepath.Base(file); {
			case base == "kustomization.yaml":
				var k types.Kustomization
				if err := yaml.UnmarshalStrict(data, &k); err != nil {
					t.Fatalf("strict decode of kustomization: %v", err)
				}
				if k.Kind != types.KustomizationKind && k.Kind != types.ComponentKind {
					t.Fatalf("kind %q, want %s or %s", k.Kind, types.KustomizationKind, types.ComponentKind)
				}
			case base == "routes.yaml":
				var rules []routeRule
				if err := yaml.UnmarshalStrict(data, &rules); err != nil {
					t.Fatalf("strict decode of route rules: %v", err)
				}
				if len(rules) == 0 {
					t.Fatal("no route rules")
				}
				for i, r := range rules {
					switch r.Permission {
					case "", "admin", "read", "write", "pin", "unpin":
					default:
						t.Errorf("rule %d: unknown permission %q", i, r.Permission)
					}
					if r.Method == "" || !strings.HasPrefix(r.Path, "/") || (r.Cost != nil && *r.Cost < 0) {
						t.Errorf("rule %d incomplete: %+v", i, r)
					}
				}
			case isJSONPatchFile(data):
				var ops []jsonPatchOp
				if err := yaml.UnmarshalStrict(data, &ops); err != nil {
					t.Fatalf("strict decode of JSON patch: %v", err)
				}
				for i, op := range ops {
					switch op.Op {
					case "add", "remove", "replace", "move", "copy", "test":
					default:
						t.Errorf("op %d: unknown operation %q", i, op.Op)
					}
				}
			default:
				docs, err := splitYAML(data)
				if err != nil {
					t.Fatal(err)
				}
				if len(docs) == 0 {
					t.Fatal("no documents")
				}
				for i, doc := range docs {
					if _, _, err := decodeObject(doc); err != nil {
						t.Errorf("document %d: %v", i, err)
					}
				}
			}
		})
	}
}

// isJSONPatchFile tells a kustomize JSON6902 patch file (a YAML list) from an
// object manifest (a YAML mapping).
func isJSONPatchFile(data []byte) bool {
	var list []any
	return yaml.Unmarshal(data, &list) == nil && len(list) > 0
}

// TestDecodeObjectRejectsUnknownFields proves the strict decoder is strict,
// so a passing TestManifestsDecodeStrictly means something.
func TestDecodeObjectRejectsUnknownFields(t *testing.T) {
	tests := []struct {
		name string
		doc  string
	}{
		{"misspelt pod field", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: a, image: b, imagePullPolcy: Always}]\n"},
		{"misspelt webhook field", "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: x}\nwebhooks: [{name: a.b.c, failurePolcy: Fail}]\n"},
		{"duplicate field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: ClusterIP, type: NodePort}\n"},
		{"unknown kind", "apiVersion: v1\nkind: Podd\nmetadata: {name: x}\n"},
		{"misspelt certificate field", "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: x}\nspec: {secretName: s, dnsName: [a]}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := decodeObject([]byte(tt.doc)); err == nil {
				t.Fatal("decoded without error")
			}
		})
	}
}
