package extauthz_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"
)

// TestEnvoyRecipe: deploy/envoy/envoy.yaml is a valid Envoy bootstrap by
// Envoy's own protos (unknown fields refused, typed configs resolved) and
// validation rules, and it calls keygate as the docs say: gRPC ext_authz to
// the keygate cluster over HTTP/2, closed on failure with 503, health
// checked with the Authorization service's gRPC health, on a connection
// manager that forwards the canonical path. docs/authz-envoy.md shows it
// verbatim.
func TestEnvoyRecipe(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &bs); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v", err)
	}
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("Envoy's validation rules: %v", err)
	}

	var hcm hcmv3.HttpConnectionManager
	if err := bs.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() || hcm.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		t.Error("the connection manager does not forward the canonical path keygate decides on")
	}
	var ea extauthzv3.ExtAuthz
	if err := hcm.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&ea); err != nil {
		t.Fatalf("the first HTTP filter is not ext_authz: %v", err)
	}
	if ea.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "keygate" || ea.GetFailureModeAllow() ||
		ea.GetStatusOnError().GetCode() != typev3.StatusCode_ServiceUnavailable {
		t.Errorf("ext_authz %v", &ea)
	}
	var kg *struct{}
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() != "keygate" {
			continue
		}
		kg = &struct{}{}
		var po httpv3.HttpProtocolOptions
		if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil ||
			po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Errorf("keygate cluster does not speak HTTP/2: %v", err)
		}
		if hc := c.GetHealthChecks(); len(hc) != 1 || hc[0].GetGrpcHealthCheck().GetServiceName() != "envoy.service.auth.v3.Authorization" {
			t.Errorf("keygate cluster health checks %v", hc)
		}
	}
	if kg == nil {
		t.Error("no keygate cluster")
	}

	docs, err := os.ReadFile("../../docs/authz-envoy.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(docs), string(raw)) {
		t.Error("docs/authz-envoy.md does not show deploy/envoy/envoy.yaml as it is")
	}
}
