package gate

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
)

// MaxBodyBytes bounds the body of every self-served and operator request.
const MaxBodyBytes = 1 << 20

// DecodeJSON decodes a JSON request body strictly: bounded size, no unknown
// fields, one value only.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		var netErr net.Error
		switch {
		case errors.As(err, &tooBig):
			return tooBig
		case errors.As(err, &netErr) && netErr.Timeout():
			// The body's read deadline passed (a trickled upload); the
			// error's text names both socket addresses, which the client
			// is not shown.
			return &ClientError{Status: http.StatusRequestTimeout, Msg: "request body not received in time"}
		case errors.Is(err, io.EOF):
			return BadRequest("request body must be a JSON object")
		case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
			return BadRequest("malformed JSON in request body")
		case errors.As(err, &typ) && typ.Field == "":
			return BadRequest("request body must be a JSON object")
		case errors.As(err, &typ):
			return BadRequest("field %q must be a %s", typ.Field, jsonKind(typ.Type.Kind().String()))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return BadRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		default:
			return BadRequest("invalid request body: %v", err)
		}
	}
	if dec.More() {
		return BadRequest("request body must hold a single JSON object")
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64", "uint", "float64":
		return "number"
	case "slice":
		return "list"
	case "struct", "map":
		return "object"
	case "bool":
		return "boolean"
	default:
		return goKind
	}
}
