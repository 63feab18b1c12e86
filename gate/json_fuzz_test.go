package gate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// Bodies with the field kinds of the fronts' request bodies (admin's plan,
// org and key bodies, seeds 000/001's key and partner bodies): numbers
// behind pointers, strings, lists, maps of numbers, raw JSON and booleans.
// The fronts' own fuzz targets send arbitrary bodies to the real types.
type (
	fuzzPlanBody struct {
		ID             *int64           `json:"id"`
		Name           string           `json:"name"`
		MaxAPIRequests *int64           `json:"max_api_requests"`
		Limits         map[string]int64 `json:"limits"`
	}
	fuzzOrgPatch struct {
		Name           *string         `json:"name"`
		Partner        *bool           `json:"partner"`
		MaxAPIRequests json.RawMessage `json:"max_api_requests"`
	}
	fuzzKeyBody struct {
		Name        string   `json:"name"`
		Permissions []string `json:"permissions"`
		Max         *int64   `json:"max"`
	}
)

// FuzzDecodeJSON decodes arbitrary bytes into each kind of request body:
// DecodeJSON must answer nil or an error that Classify turns into a 4xx,
// never a 5xx and never a panic.
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"id":1,"name":"p","max_api_requests":null,"limits":{"ingress":5}}`))
	f.Add([]byte(`{"id":1e400}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		targets := []func() any{
			func() any { return new(fuzzPlanBody) },
			func() any { return new(fuzzOrgPatch) },
			func() any { return new(fuzzKeyBody) },
			func() any { return new(map[string]any) },
			func() any { return new(int64) },
		}
		for _, newV := range targets {
			v := newV()
			rec := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			err := DecodeJSON(rec, r, v)
			if err == nil {
				continue
			}
			p := Classify(err, time.Unix(1700000000, 0))
			if p.Status < 400 || p.Status > 499 || p.Internal || p.Message == "" {
				t.Fatalf("%T: %v → %+v, want a 4xx with a message", v, err, p)
			}
		}
	})
}
