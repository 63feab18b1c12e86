// Package openapi holds the OpenAPI 3.1 document of every HTTP surface
// keygate answers itself (the operator API on the admin listener, the
// self-served routes of the four seeds on the data listener) and serves it.
// Its one job is to be that document; the tests of cmd/keygate check every
// answer the end-to-end suite receives against it, so it cannot drift from
// the code. It imports only the standard library.
package openapi

import (
	_ "embed"
	"net/http"
	"strconv"
)

//go:embed openapi.json
var document []byte

// Document returns the OpenAPI document (JSON). The caller gets its own
// copy: the embedded bytes are shared by every request.
func Document() []byte {
	return append([]byte(nil), document...)
}

// Handler serves the document as-is to GET and HEAD; other methods get 405
// in the operator API's error shape. Cache-Control: no-cache makes clients
// revalidate, so an upgraded sidecar's document is seen at once.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusMethodNotAllowed)
			_, _ = w.Write([]byte(`{"error":true,"statusCode":405,"message":"method not allowed"}` + "\n"))
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(document)))
		h.Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(document)
		}
	})
}
