package openapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/keygate/keygate/openapi"
)

// load parses and validates the document as an OpenAPI 3.1 document.
// kin-openapi (v0.153) reads the version field: doc.Validate then checks
// 3.1 forms (type arrays, const, numeric exclusive bounds) and
// openapi3filter validates values with its JSON Schema 2020-12 validator.
func load(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openapi.Document())
	if err != nil {
		t.Fatalf("loading the document: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("the document is not valid OpenAPI: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() || doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	return doc
}

func TestDocumentValidates(t *testing.T) {
	doc := load(t)
	listeners := map[string]int{}
	for path, item := range doc.Paths.Map() {
		l, _ := item.Extensions["x-keygate-listener"].(string)
		if l != "admin" && l != "data" && l != "authz" {
			t.Errorf("%s: x-keygate-listener = %q, want admin, data or authz", path, l)
		}
		if l == "admin" && (len(item.Servers) != 1 || !strings.Contains(item.Servers[0].Description, "admin listener")) {
			t.Errorf("%s: on the admin listener, but its servers do not say so", path)
		}
		if l == "authz" && (len(item.Servers) != 1 || !strings.Contains(item.Servers[0].Description, "authorization listener")) {
			t.Errorf("%s: on the authorization listener, but its servers do not say so", path)
		}
		for method, op := range item.Operations() {
			listeners[l]++
			if len(op.Tags) != 1 {
				t.Errorf("%s %s: tags %v, want one", method, path, op.Tags)
			}
			if op.Security == nil {
				t.Errorf("%s %s: no security requirement (use [{}] for none)", method, path)
			}
			if op.Responses.Status(500) == nil && path != "/openapi.json" {
				t.Errorf("%s %s: no 500 answer documented", method, path)
			}
		}
	}
	// routes.go's data-listener table and the operator API (plus this
	// document); the end-to-end route test checks them against the code.
	// The authorization listener has one operation, on every path.
	if listeners["data"] != 16 || listeners["admin"] != 15 || listeners["authz"] != 1 {
		t.Errorf("operations per listener %v, want data 16, admin 15, authz 1", listeners)
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(openapi.Handler())
	defer srv.Close()
	for _, method := range []string{"GET", "HEAD"} {
		resp := do(t, method, srv.URL+"/openapi.json")
		body := read(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("%s: %d %v", method, resp.StatusCode, resp.Header)
		}
		want := openapi.Document()
		if method == "HEAD" {
			want = nil
		}
		if !bytes.Equal(body, want) {
			t.Errorf("%s: body is not the document (%d bytes)", method, len(body))
		}
	}
	resp := do(t, "POST", srv.URL+"/openapi.json")
	if body := read(t, resp); resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" ||
		strings.TrimSpace(string(body)) != `{"error":true,"statusCode":405,"message":"method not allowed"}` {
		t.Errorf("POST: %d %v %s", resp.StatusCode, resp.Header, body)
	}
}

// Document returns a copy: a caller cannot change what is served.
func TestDocumentIsACopy(t *testing.T) {
	a := openapi.Document()
	a[0] = 'x'
	if openapi.Document()[0] != '{' {
		t.Fatal("Document shares its bytes with the caller")
	}
}

// TestResponseValidationCatchesMismatches proves the validator the
// end-to-end suite uses enforces the 3.1 forms the document relies on,
// rather than accepting anything: null in a type array, const, closed
// objects and required fields.
func TestResponseValidationCatchesMismatches(t *testing.T) {
	doc := load(t)
	doc.Servers = nil // match by path, whatever the listener's address
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	const quota = `"organization_quota":{"total_usage":1,"total_quota":%s,"current_usage":1,"max_api_requests":5000000,` +
		`"allocated_api_key_quota":0,"available_api_key_quota":5000000,"source":"plan","unlimited":false}`
	account := func(keyMax, total, extra string) string {
		return `{"counts_toward_quota":false,"request_cost":0,"organization_id":"c0a19bd8-3e9a-49c1-863c-faa32d430720",` +
			`"api_key":{"uid":"ba8fbcae-8b77-4666-9ac6-ded794f57755","name":"Cloud Firewall","current_usage":1,` +
			`"max_api_requests":` + keyMax + `,"created_at":"2026-03-30T18:19:56.072Z"` + extra + `},` +
			strings.Replace(quota, "%s", total, 1) + `}`
	}
	cases := []struct {
		name, method, path string
		status             int
		header             http.Header
		body               string
		ok                 bool
	}{
		{"seed 002 example", "GET", "/api/v1/account", 200, nil, account("null", "5000000", ""), true},
		{"integer in a type array", "GET", "/api/v1/account", 200, nil, account("10", "null", ""), true},
		{"string where integer or null", "GET", "/api/v1/account", 200, nil, account(`"10"`, "5000000", ""), false},
		{"unknown field", "GET", "/api/v1/account", 200, nil, account("null", "5000000", `,"secret":"x"`), false},
		{"missing field", "GET", "/api/v1/account", 200, nil, `{"counts_toward_quota":false}`, false},
		{"const", "GET", "/api/v1/account", 200, nil, strings.Replace(account("null", "1", ""), `"request_cost":0`, `"request_cost":1`, 1), false},
		{"401 without credential", "GET", "/api/v1/account", 401, nil, `{"statusCode":401,"statusMessage":"Valid API key required"}`, true},
		{"401 signed, bad ts", "GET", "/api/v1/account", 401, nil, `{"error":true,"statusCode":401,"message":"missing ts query parameter (Unix time in seconds)"}`, true},
		{"gw3 envelope on seed 002", "GET", "/api/v1/account", 403, nil, `{"code":403,"msg":"Invalid API key"}`, false},
		{"undocumented status", "GET", "/api/v1/account", 418, nil, `{"error":true,"statusCode":418,"message":"teapot"}`, false},
		{"503 needs Retry-After", "GET", "/api/v0/stats", 503, nil, `{"code":503,"msg":"Key store unavailable, retry shortly"}`, false},
		{"503 with Retry-After", "GET", "/api/v0/stats", 503, http.Header{"Retry-After": {"1"}}, `{"code":503,"msg":"Key store unavailable, retry shortly"}`, true},
		{"bare ok", "DELETE", "/api/v0/key", 200, nil, `{"code":200,"msg":"ok"}`, true},
		{"bare ok with data", "DELETE", "/api/v0/key", 200, nil, `{"code":200,"msg":"ok","data":null}`, false},
		{"path parameter", "DELETE", "/admin/v1/orgs/jack_001/keys/k1", 204, nil, "", true},
		{"seed 003 error id", "POST", "/user/delete_apikey", 404, nil, `{"status":"error","error_id":"user/delete_apikey/failed","message":"Apikey deletion failed. Possibly wrong owner."}`, true},
		{"unknown error id", "POST", "/user/delete_apikey", 404, nil, `{"status":"error","error_id":"user/nope","message":"x"}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, "http://127.0.0.1:1"+c.path, nil)
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Fatalf("no route for %s %s: %v", c.method, c.path, err)
			}
			h := http.Header{"Content-Type": {"application/json"}}
			for k, v := range c.header {
				h[k] = v
			}
			err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
				Status:                 c.status,
				Header:                 h,
				Body:                   io.NopCloser(strings.NewReader(c.body)),
				Options:                &openapi3filter.Options{IncludeResponseStatus: true},
			})
			if (err == nil) != c.ok {
				t.Fatalf("valid = %v, want %v (%v)", err == nil, c.ok, err)
			}
		})
	}
}

func do(t *testing.T, method, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func read(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
