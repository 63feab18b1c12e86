package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/keygate/keygate/keys"
)

// maxBodyBytes bounds the body of every self-served and operator request.
const maxBodyBytes = 1 << 20

// maxCommentLen bounds a key's comment (seed 003: 255 characters).
const maxCommentLen = 255

// newKeyRequest is what every key-creating route asks for.
type newKeyRequest struct {
	orgID       string
	name        string
	permissions []keys.Permission
	max         *int64
	comment     string
}

// createKey creates a key under the organization's allocation rule and
// returns it with its secret, which is never available again.
func (h *Handler) createKey(ctx context.Context, req newKeyRequest) (keys.Key, string, error) {
	if err := keys.ValidateName("name", req.name); err != nil {
		return keys.Key{}, "", err
	}
	if req.max != nil && *req.max < 0 {
		return keys.Key{}, "", &keys.InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if len([]rune(req.comment)) > maxCommentLen {
		return keys.Key{}, "", &keys.InvalidError{Field: "comment", Reason: fmt.Sprintf("must be at most %d characters", maxCommentLen)}
	}
	o, err := h.opt.Store.Org(ctx, req.orgID)
	if err != nil {
		return keys.Key{}, "", fmt.Errorf("reading org: %w", err)
	}
	allocLimit, err := h.allocLimit(ctx, o)
	if err != nil {
		return keys.Key{}, "", err
	}
	secret, err := keys.NewSecret()
	if err != nil {
		return keys.Key{}, "", err
	}
	uid, err := keys.NewUUID()
	if err != nil {
		return keys.Key{}, "", err
	}
	k := keys.Key{
		UID:            uid,
		OrgID:          o.ID,
		Name:           req.name,
		Permissions:    req.permissions,
		MaxAPIRequests: req.max,
		Comment:        req.comment,
		CreatedAt:      h.opt.Now().UTC(),
		SecretHash:     keys.HashSecret(secret),
	}
	if err := h.sealSecret(&k, secret); err != nil {
		return keys.Key{}, "", err
	}
	if err := h.opt.Store.CreateKey(ctx, k, allocLimit); err != nil {
		return keys.Key{}, "", fmt.Errorf("creating key: %w", err)
	}
	return k, secret, nil
}

// sealSecret stores the secret encrypted when request signing is on, so the
// key can sign requests; without a Sealer the key gets no sealed secret.
func (h *Handler) sealSecret(k *keys.Key, secret string) error {
	if h.opt.Sealer == nil {
		return nil
	}
	sealed, err := h.opt.Sealer.Seal(*k, secret)
	if err != nil {
		return fmt.Errorf("sealing secret: %w", err)
	}
	k.SealedSecret = sealed
	return nil
}

// allocLimit is the organization's request quota, the bound on the sum of
// its keys' maxima; -1 when unlimited.
func (h *Handler) allocLimit(ctx context.Context, o keys.Org) (int64, error) {
	pl, err := h.opt.Store.Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return 0, fmt.Errorf("reading plan: %w", err)
	}
	limit, _ := o.RequestQuota(pl)
	return limit, nil
}

// deleteKey deletes a key by name and revokes it on this sidecar at once;
// the store tells the others.
func (h *Handler) deleteKey(ctx context.Context, orgID, name string) (keys.Key, error) {
	k, err := h.opt.Store.DeleteKey(ctx, orgID, name)
	if err = h.madeAnyway(err); err != nil {
		return keys.Key{}, fmt.Errorf("deleting key: %w", err)
	}
	h.opt.Auth.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
	return k, nil
}

// madeAnyway turns a store's ErrNotBroadcast into success with a warning:
// the change was made, and the caller revokes it locally at once; other
// sidecars forget the old state within their cache TTL instead of at once.
func (h *Handler) madeAnyway(err error) error {
	if errors.Is(err, keys.ErrNotBroadcast) {
		h.log.Warn("change made but its revocation was not broadcast: other sidecars apply it within KEYGATE_AUTH_CACHE_TTL", zap.Error(err))
		return nil
	}
	return err
}

// decodeJSON decodes a JSON request body strictly: bounded size, no unknown
// fields, one value only.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return tooBig
		case errors.Is(err, io.EOF):
			return badRequest("request body must be a JSON object")
		case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
			return badRequest("malformed JSON in request body")
		case errors.As(err, &typ) && typ.Field == "":
			return badRequest("request body must be a JSON object")
		case errors.As(err, &typ):
			return badRequest("field %q must be a %s", typ.Field, jsonKind(typ.Type.Kind().String()))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		default:
			return badRequest("invalid request body: %v", err)
		}
	}
	if dec.More() {
		return badRequest("request body must hold a single JSON object")
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
