package gate_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/keygate/keygate/gate"
)

// TestDecodeJSONErrors: each way a body can be wrong is a client error
// with a message for the client; a body whose read deadline passed is 408
// and its message names no socket address.
func TestDecodeJSONErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   io.Reader
		status int
		msg    string
	}{
		{"empty", strings.NewReader(""), 400, "request body must be a JSON object"},
		{"syntax", strings.NewReader(`{"a":`), 400, "malformed JSON in request body"},
		{"unknown field", strings.NewReader(`{"b":1}`), 400, `unknown field "b"`},
		{"two values", strings.NewReader(`{"a":1}{"a":2}`), 400, "request body must hold a single JSON object"},
		{"too big", strings.NewReader(`{"a":"` + strings.Repeat("x", gate.MaxBodyBytes) + `"}`), 413, "Request body larger than 1048576 bytes"},
		{"read deadline", io.MultiReader(strings.NewReader(`{"a":`), iotest.ErrReader(os.ErrDeadlineExceeded)), 408, "request body not received in time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", tc.body)
			var v struct{ A any }
			err := gate.DecodeJSON(httptest.NewRecorder(), r, &v)
			if err == nil {
				t.Fatal("no error")
			}
			p := gate.Classify(err, time.Time{})
			if p.Status != tc.status || p.Message != tc.msg || p.Internal {
				t.Errorf("%v: %d %q (internal %v), want %d %q", err, p.Status, p.Message, p.Internal, tc.status, tc.msg)
			}
			var tooBig *http.MaxBytesError
			if tc.status != 413 && errors.As(err, &tooBig) {
				t.Errorf("%v is a MaxBytesError", err)
			}
		})
	}
}
