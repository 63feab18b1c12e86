package proxy

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"

	"go.uber.org/zap"

	"github.com/keygate/keygate/keys"
)

// Seed 003: /user/apikeys, /user/create_apikey and /user/delete_apikey on the
// data listener. Fields come as application/x-www-form-urlencoded or
// multipart/form-data POST bodies (the seed uses curl -F), never from the
// query string; GET /user/apikeys takes its credential from the headers.
// Answers are {"status":"success","data":…} or
// {"status":"error","error_id":…,"message":…} with the status of the one
// error mapping (classify).
//
// The apikey field is a credential on these routes, as is any header form.
// Every route needs access level full (the admin permission);
// create_apikey may instead log in with the organization's username and
// password.
//
// Access levels map onto permissions:
//
//	basic  → read, write, pin          (use the API)
//	apikey → read, write, pin, unpin   (also remove content)
//	full   → admin                     (everything, including managing keys)
//
// A listed key shows the highest level whose permissions it holds in full
// (basic when it holds none in full, e.g. read only), and its exact
// permissions beside it. Listed keys are identified by their public
// access_key, never by their secret.

// Error ids of the seed 003 routes (the error_id field).
const (
	userErrUnauthorized       = "user/unauthorized"
	userErrForbidden          = "user/forbidden"
	userErrBadRequest         = "user/bad_request"
	userErrTooLarge           = "user/request_too_large"
	userErrMediaType          = "user/unsupported_media_type"
	userErrUnavailable        = "user/unavailable"
	userErrInternal           = "user/internal_error"
	userErrInvalidAccessLevel = "user/create_apikey/invalid_access_level"
	userErrInvalidComment     = "user/create_apikey/invalid_comment"
	userErrAmbiguous          = "user/create_apikey/ambiguous_credentials"
	userErrMissingDeleteKey   = "user/delete_apikey/missing_delete_key"
	userErrDeleteFailed       = "user/delete_apikey/failed"
)

// Access levels of seed 003, lowest first.
var accessLevels = []struct {
	name  string
	perms []keys.Permission
}{
	{"basic", []keys.Permission{keys.PermRead, keys.PermWrite, keys.PermPin}},
	{"apikey", []keys.Permission{keys.PermRead, keys.PermWrite, keys.PermPin, keys.PermUnpin}},
	{"full", []keys.Permission{keys.PermAdmin}},
}

// accessLevelPerms returns the permissions of an access level.
func accessLevelPerms(level string) ([]keys.Permission, bool) {
	for _, l := range accessLevels {
		if l.name == level {
			return slices.Clone(l.perms), true
		}
	}
	return nil, false
}

// accessLevelOf returns the highest access level whose permissions ps
// holds; basic when none.
func accessLevelOf(ps []keys.Permission) string {
	level := accessLevels[0].name
	for _, l := range accessLevels {
		all := true
		for _, need := range l.perms {
			all = all && keys.Allows(ps, need)
		}
		if all {
			level = l.name
		}
	}
	return level
}

// userError gives an error the error_id a client sees.
type userError struct {
	id  string
	err error
}

func (e *userError) Error() string { return e.err.Error() }
func (e *userError) Unwrap() error { return e.err }

func withUserID(id string, err error) error { return &userError{id: id, err: err} }

type userSuccess struct {
	Status string `json:"status"`
	Data   any    `json:"data"`
}

type userErrorBody struct {
	Status  string `json:"status"`
	ErrorID string `json:"error_id"`
	Message string `json:"message"`
}

// userFail renders err's problem in the seed 003 error envelope.
func (h *Handler) userFail(w http.ResponseWriter, r *http.Request, rec *accessRecord, err error) {
	p := classify(err, h.opt.Now())
	rec.outcome = p.outcome
	if p.internal {
		h.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	}
	setRetryAfter(w.Header(), p.retryAfter)
	writeJSON(w, p.status, userErrorBody{Status: "error", ErrorID: userErrorID(err, p), Message: p.message})
}

// userErrorID is the error_id of err: the one it was given, else one
// derived from its problem.
func userErrorID(err error, p problem) string {
	var ue *userError
	switch {
	case errors.As(err, &ue):
		return ue.id
	// 401s include a signed request's bad ts or spent signature: the
	// credential is refused, whatever the problem's outcome label.
	case p.outcome == outcomeNoCredential || p.outcome == outcomeInvalidCredential || p.status == http.StatusUnauthorized:
		return userErrUnauthorized
	case p.outcome == outcomeForbidden:
		return userErrForbidden
	case p.status == http.StatusRequestEntityTooLarge:
		return userErrTooLarge
	case p.status == http.StatusUnsupportedMediaType:
		return userErrMediaType
	case p.status == http.StatusServiceUnavailable:
		return userErrUnavailable
	case p.status >= 500:
		return userErrInternal
	default:
		return userErrBadRequest
	}
}

func userOK(w http.ResponseWriter, rec *accessRecord, data any) {
	rec.outcome = outcomeAdmitted
	writeJSON(w, http.StatusOK, userSuccess{Status: "success", Data: data})
}

// userForm reads the POST fields of a seed 003 request: bounded, either
// form encoding, each field at most once, none but allowed. A GET has none.
func userForm(w http.ResponseWriter, r *http.Request, allowed ...string) (url.Values, error) {
	if r.Method == http.MethodGet {
		return url.Values{}, nil
	}
	if r.ContentLength > maxBodyBytes {
		return nil, &http.MaxBytesError{Limit: maxBodyBytes}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	ct := r.Header.Get("Content-Type")
	if ct == "" && r.ContentLength == 0 {
		return url.Values{}, nil // no fields: a header credential, e.g. for apikeys
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = ""
	}
	switch mt {
	case "application/x-www-form-urlencoded":
		err = r.ParseForm()
	case "multipart/form-data":
		err = r.ParseMultipartForm(maxBodyBytes)
		if r.MultipartForm != nil {
			defer func() { _ = r.MultipartForm.RemoveAll() }()
			if err == nil && len(r.MultipartForm.File) > 0 {
				return nil, badRequest("file parts are not accepted; send fields only")
			}
		}
	default:
		return nil, &badRequestError{status: http.StatusUnsupportedMediaType,
			msg: "send fields as application/x-www-form-urlencoded or multipart/form-data"}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, tooBig
		}
		return nil, badRequest("malformed form body")
	}
	for name, vs := range r.PostForm {
		if !slices.Contains(allowed, name) {
			return nil, badRequest("unknown field %q", name)
		}
		if len(vs) > 1 {
			return nil, badRequest("field %q given more than once", name)
		}
	}
	return r.PostForm, nil
}

// userAuth authenticates from the apikey field, else from the headers, and
// requires access level full.
func (h *Handler) userAuth(r *http.Request, rec *accessRecord, form url.Values) (keys.Principal, error) {
	var p keys.Principal
	var err error
	if v := form.Get("apikey"); v != "" {
		p, err = h.authenticateRecorded(r, credential{Credential: keys.Credential{Secret: v}}, rec)
	} else {
		p, err = h.selfAuth(r, rec)
	}
	if err != nil {
		return keys.Principal{}, err
	}
	if !p.Can(keys.PermAdmin) {
		return keys.Principal{}, withUserID(userErrForbidden, &badRequestError{status: http.StatusForbidden,
			msg: `API key lacks access level full (the "admin" permission)`})
	}
	return p, nil
}

// userLogin verifies the organization's username and password. An unknown
// user and a wrong password give the same answer after the same work: the
// password is always verified, against a dummy hash when there is no user.
func (h *Handler) userLogin(ctx context.Context, rec *accessRecord, username, password string) (keys.Org, error) {
	o, err := h.opt.Store.OrgByUsername(ctx, username)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return keys.Org{}, fmt.Errorf("reading login: %w", err)
	}
	// Each password check holds argon2id's memory (32 MiB): a bounded
	// number run at once, so a flood of logins cannot exhaust the sidecar.
	select {
	case h.logins <- struct{}{}:
		defer func() { <-h.logins }()
	case <-ctx.Done():
		return keys.Org{}, errBusy
	}
	if ok := keys.VerifyPassword(o.PasswordHash, password); !ok || o.Username == "" {
		return keys.Org{}, withUserID(userErrUnauthorized, &badRequestError{status: http.StatusForbidden, msg: "Invalid username or password"})
	}
	rec.org = o.ID
	return o, nil
}

// userKey is a key as /user/apikeys lists it.
type userKey struct {
	Key         string   `json:"key"`
	Created     int64    `json:"created"`
	Comment     string   `json:"comment"`
	AccessLevel string   `json:"access_level"`
	Permissions []string `json:"permissions"`
}

func (h *Handler) handleUserAPIKeys(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	form, err := userForm(w, r, "apikey")
	if err != nil {
		h.userFail(w, r, rec, err)
		return
	}
	p, err := h.userAuth(r, rec, form)
	if err != nil {
		h.userFail(w, r, rec, err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	ks, err := h.opt.Store.Keys(ctx, p.Key.OrgID)
	if err != nil {
		h.userFail(w, r, rec, fmt.Errorf("listing keys: %w", err))
		return
	}
	out := make(map[string]userKey, len(ks))
	for _, k := range ks {
		perms := make([]string, len(k.Permissions))
		for i, p := range k.Permissions {
			perms[i] = string(p)
		}
		out[k.UID] = userKey{Key: k.UID, Created: k.CreatedAt.Unix(), Comment: k.Comment,
			AccessLevel: accessLevelOf(k.Permissions), Permissions: perms}
	}
	userOK(w, rec, map[string]any{"apikeys": out})
}

func (h *Handler) handleUserCreateAPIKey(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	fail := func(err error) { h.userFail(w, r, rec, err) }
	form, err := userForm(w, r, "apikey", "username", "password", "access_level", "comment")
	if err != nil {
		fail(err)
		return
	}
	level := form.Get("access_level")
	perms, ok := accessLevelPerms(level)
	if !ok {
		fail(withUserID(userErrInvalidAccessLevel, &keys.InvalidError{Field: "access_level",
			Reason: fmt.Sprintf("%q is not one of basic, apikey, full", level)}))
		return
	}
	comment := form.Get("comment")
	if len([]rune(comment)) > maxCommentLen {
		fail(withUserID(userErrInvalidComment, &keys.InvalidError{Field: "comment",
			Reason: fmt.Sprintf("must be at most %d characters", maxCommentLen)}))
		return
	}
	_, hasUser := form["username"]
	_, hasPassword := form["password"]
	login := hasUser || hasPassword
	if login && form.Get("apikey") != "" {
		fail(withUserID(userErrAmbiguous, badRequest("send either apikey or username and password, not both")))
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	var orgID string
	if login {
		o, err := h.userLogin(ctx, rec, form.Get("username"), form.Get("password"))
		if err != nil {
			fail(err)
			return
		}
		orgID = o.ID
	} else {
		p, err := h.userAuth(r, rec, form)
		if err != nil {
			if errors.Is(err, keys.ErrNoCredential) {
				err = withUserID(userErrUnauthorized, &badRequestError{status: http.StatusUnauthorized,
					msg: "Valid API key, or username and password, required"})
			}
			fail(err)
			return
		}
		orgID = p.Key.OrgID
	}
	secret, err := h.createUnnamedKey(ctx, orgID, perms, comment)
	if err != nil {
		fail(err)
		return
	}
	userOK(w, rec, map[string]string{"new_key": secret})
}

// createUnnamedKey creates a key for seed 003, which has no key names: the
// key is named "apikey-" + a random UUID, retried on the (unlikely) clash.
func (h *Handler) createUnnamedKey(ctx context.Context, orgID string, perms []keys.Permission, comment string) (string, error) {
	for attempt := 0; ; attempt++ {
		id, err := keys.NewUUID()
		if err != nil {
			return "", err
		}
		_, secret, err := h.createKey(ctx, newKeyRequest{orgID: orgID, name: "apikey-" + id, permissions: perms, comment: comment})
		if errors.Is(err, keys.ErrConflict) && attempt < 2 {
			continue
		}
		return secret, err
	}
}

func (h *Handler) handleUserDeleteAPIKey(w http.ResponseWriter, r *http.Request, rec *accessRecord) {
	fail := func(err error) { h.userFail(w, r, rec, err) }
	form, err := userForm(w, r, "apikey", "delete_key")
	if err != nil {
		fail(err)
		return
	}
	target := form.Get("delete_key")
	if target == "" {
		fail(withUserID(userErrMissingDeleteKey, &keys.InvalidError{Field: "delete_key", Reason: "is required"}))
		return
	}
	p, err := h.userAuth(r, rec, form)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := h.storeCtx(r.Context())
	defer cancel()
	k, err := h.deleteOwnKey(ctx, p.Key.OrgID, target)
	if err != nil {
		fail(err)
		return
	}
	userOK(w, rec, map[string]any{"deleted_keys": map[string]any{k.UID: map[string]string{"key": k.UID}}})
}

// errDeleteFailed is the seed's answer for a key that is not the caller's
// (or does not exist).
var errDeleteFailed = withUserID(userErrDeleteFailed, &badRequestError{status: http.StatusNotFound,
	msg: "Apikey deletion failed. Possibly wrong owner."})

// deleteOwnKey deletes the key of org identified by its access_key or its
// secret. Another organization's key is left alone.
func (h *Handler) deleteOwnKey(ctx context.Context, orgID, target string) (keys.Key, error) {
	var k keys.Key
	var err error
	switch {
	case keys.CheckSecret(target):
		k, err = h.opt.Store.KeyByHash(ctx, keys.HashSecret(target))
	case len(target) <= 64:
		k, err = h.opt.Store.KeyByUID(ctx, target)
	default:
		return keys.Key{}, errDeleteFailed
	}
	if errors.Is(err, keys.ErrNotFound) || err == nil && k.OrgID != orgID {
		return keys.Key{}, errDeleteFailed
	}
	if err != nil {
		return keys.Key{}, fmt.Errorf("reading key: %w", err)
	}
	if _, err := h.deleteKey(ctx, orgID, k.Name); err != nil {
		if errors.Is(err, keys.ErrNotFound) {
			return keys.Key{}, errDeleteFailed
		}
		return keys.Key{}, err
	}
	return k, nil
}
