//go:build e2ek8s

package deploytest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

// createFixtureCRDs registers the structural CRDs of testdata/crds (the
// kinds of the authorization recipes) and waits until they are served.
func createFixtureCRDs(ctx context.Context, t *testing.T, dyn dynamic.Interface, cs kubernetes.Interface) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRD fixtures: %v", err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var kinds []schema.GroupVersionKind
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &obj.Object); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create CRD from %s: %v", f, err)
		}
		group, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "kind")
		versions, _, _ := unstructured.NestedSlice(obj.Object, "spec", "versions")
		v, _ := versions[0].(map[string]any)
		kinds = append(kinds, schema.GroupVersionKind{Group: group, Version: v["name"].(string), Kind: kind})
	}
	poll(ctx, t, "fixture CRDs served", 30*time.Second, func() (bool, error) {
		groups, err := restmapper.GetAPIGroupResources(cs.Discovery())
		if err != nil {
			return false, err
		}
		mapper := restmapper.NewDiscoveryRESTMapper(groups)
		for _, k := range kinds {
			if _, err := mapper.RESTMapping(k.GroupKind(), k.Version); err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

// applyStrict applies obj with server-side apply, dryRun=All and strict
// field validation: a field the schema does not know is an error, not a
// warning (the default) or silently pruned.
func applyStrict(ctx context.Context, res dynamic.ResourceInterface, obj *unstructured.Unstructured) error {
	data, err := json.Marshal(obj.Object)
	if err != nil {
		return err
	}
	force := true
	_, err = res.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		FieldManager: "keygate-e2e", DryRun: []string{metav1.DryRunAll}, Force: &force, FieldValidation: "Strict",
	})
	return err
}

// checkRecipesRefuseTypos: the fixture CRDs are strict enough to matter: a
// recipe object with a misspelt field or a wrong enum value is refused.
func checkRecipesRefuseTypos(ctx context.Context, t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, ns string) {
	t.Helper()
	for _, doc := range []string{
		"apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: typo}\nspec: {forwardAuth: {adress: http://keygate/}}\n",
		"apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: typo}\nspec: {forwardauth: {address: http://keygate/}}\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo}\nspec: {action: CUSTOMER, provider: {name: keygate-grpc}}\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo}\nspec: {action: CUSTOM, provider: {nmae: keygate-grpc}}\n",
		"apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: typo}\nspec: {extAuth: {grpc: {backendRefs: [{name: keygate-authz, prot: 9001}]}}}\n",
		"apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: typo}\nspec: {extAuth: {failOpen: \"no\", grpc: {backendRefs: [{name: keygate-authz, port: 9001}]}}}\n",
	} {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatal(err)
		}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatal(err)
		}
		if err := applyStrict(ctx, dyn.Resource(m.Resource).Namespace(ns), obj); err == nil {
			t.Errorf("accepted:\n%s", doc)
		}
	}
}

// checkAuthzModePods: keygate.io/mode=authz stores keygate beside the
// pod's containers without taking its port; an unknown mode is refused
// with the reason.
func checkAuthzModePods(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Run("authz mode adds keygate without taking the pod's port", func(t *testing.T) {
		got, err := cs.CoreV1().Pods("shop").Create(ctx, appPod("authz", true, map[string]string{"keygate.io/mode": "authz"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		var kg *corev1.Container
		for i := range got.Spec.InitContainers {
			if got.Spec.InitContainers[i].Name == "keygate" {
				kg = &got.Spec.InitContainers[i]
			}
		}
		if kg == nil {
			t.Fatalf("no keygate sidecar: %+v", got.Spec)
		}
		env := map[string]string{}
		for _, e := range kg.Env {
			env[e.Name] = e.Value
		}
		if _, ok := env["KEYGATE_UPSTREAM_URL"]; ok || env["KEYGATE_AUTHZ_GRPC_ADDR"] != ":9001" || env["KEYGATE_AUTHZ_ADDR"] != ":9002" {
			t.Errorf("keygate env %v", env)
		}
		if port, ok := resolveTargetPort(got, intstr.FromString("http")); !ok || port != 8080 {
			t.Errorf("Service targetPort http resolves to %d (%v), want the app's own 8080", port, ok)
		}
		if app := got.Spec.Containers[0]; app.Ports[0].Name != "http" || app.ReadinessProbe.HTTPGet.Port != intstr.FromString("http") {
			t.Errorf("app container changed: %+v", app)
		}
		checkHardened(t, &got.Spec, []corev1.Container{*kg})
	})
	t.Run("unknown mode is refused with the reason", func(t *testing.T) {
		_, err := cs.CoreV1().Pods("shop").Create(ctx, appPod("bad-mode", true, map[string]string{"keygate.io/mode": "ambassador"}), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "keygate injector") || !strings.Contains(err.Error(), "keygate.io/mode") {
			t.Fatalf("err %v, want a denial naming the annotation", err)
		}
	})
}
