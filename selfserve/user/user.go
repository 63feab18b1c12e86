// Package user is seed 003 on the data listener: /user/apikeys,
// /user/create_apikey and /user/delete_apikey. Fields come as application/x-www-form-urlencoded or
// multipart/form-data POST bodies (the seed uses curl -F), never from the
// query string; GET /user/apikeys takes its credential from the headers.
// Answers are {"status":"success","data":…} or
// {"status":"error","error_id":…,"message":…} with the status of the one
// error mapping (gate.Classify).
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
package user

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"slices"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/metrics"
)

// maxConcurrentLogins bounds the password checks running at once (argon2id
// holds 32 MiB each).
const maxConcurrentLogins = 2

// Options configure an API. Gate and Manage are required.
type Options struct {
	Gate   *gate.Decider
	Manage *manage.Service
	// LoginFailLimit bounds the password logins per username from
	// addresses that have not logged in as that user before
	// (KEYGATE_LOGIN_FAIL_LIMIT); the zero value is off.
	LoginFailLimit guard.FailLimit
	Log            *zap.Logger
}

// API serves the seed 003 routes.
type API struct {
	opt Options
	log *zap.Logger
	// logins bounds the password checks running at once.
	logins chan struct{}
	// loginFails counts failed logins by username hash, remembering the
	// addresses that logged in; nil when off.
	loginFails *guard.FailLimiter[[32]byte, netip.Addr]
}

// New returns the API for o.
func New(o Options) *API {
	if o.Gate == nil || o.Manage == nil {
		panic("user.New: Options.Gate and Manage are required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	a := &API{opt: o, log: o.Log.Named("user"), logins: make(chan struct{}, maxConcurrentLogins)}
	if !o.LoginFailLimit.Off() {
		a.loginFails = guard.NewFailLimiter[[32]byte, netip.Addr](o.LoginFailLimit, 0, 0)
	}
	return a
}

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

// fail renders err's problem in the seed 003 error envelope.
func (a *API) fail(w *listener.Writer, r *http.Request, err error) {
	p := w.Classify(r, err, a.opt.Manage.Now(), a.log)
	gate.SetRetryAfter(w.Header(), p.RetryAfter)
	gate.WriteJSON(w, p.Status, userErrorBody{Status: "error", ErrorID: userErrorID(err, p), Message: p.Message})
}

// userErrorID is the error_id of err: the one it was given, else one
// derived from its problem.
func userErrorID(err error, p gate.Problem) string {
	var ue *userError
	switch {
	case errors.As(err, &ue):
		return ue.id
	// 401s include a signed request's bad ts or spent signature: the
	// credential is refused, whatever the problem's outcome label.
	case p.Outcome == metrics.OutcomeNoCredential || p.Outcome == metrics.OutcomeInvalidCredential || p.Status == http.StatusUnauthorized:
		return userErrUnauthorized
	case p.Outcome == metrics.OutcomeForbidden:
		return userErrForbidden
	case p.Status == http.StatusRequestEntityTooLarge:
		return userErrTooLarge
	case p.Status == http.StatusUnsupportedMediaType:
		return userErrMediaType
	case p.Status == http.StatusServiceUnavailable:
		return userErrUnavailable
	case p.Status >= 500:
		return userErrInternal
	default:
		return userErrBadRequest
	}
}

func userOK(w *listener.Writer, data any) {
	w.Outcome = metrics.OutcomeAdmitted
	gate.WriteJSON(w, http.StatusOK, userSuccess{Status: "success", Data: data})
}

// userForm reads the POST fields of a seed 003 request: bounded, either
// form encoding, each field at most once, none but allowed. A GET has none.
func userForm(w http.ResponseWriter, r *http.Request, allowed ...string) (url.Values, error) {
	if r.Method == http.MethodGet {
		return url.Values{}, nil
	}
	if r.ContentLength > gate.MaxBodyBytes {
		return nil, &http.MaxBytesError{Limit: gate.MaxBodyBytes}
	}
	r.Body = http.MaxBytesReader(w, r.Body, gate.MaxBodyBytes)
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
		err = r.ParseMultipartForm(gate.MaxBodyBytes)
		if r.MultipartForm != nil {
			defer func() { _ = r.MultipartForm.RemoveAll() }()
			if err == nil && len(r.MultipartForm.File) > 0 {
				return nil, gate.BadRequest("file parts are not accepted; send fields only")
			}
		}
	default:
		return nil, &gate.ClientError{Status: http.StatusUnsupportedMediaType,
			Msg: "send fields as application/x-www-form-urlencoded or multipart/form-data"}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, tooBig
		}
		return nil, gate.BadRequest("malformed form body")
	}
	for name, vs := range r.PostForm {
		if !slices.Contains(allowed, name) {
			return nil, gate.BadRequest("unknown field %q", name)
		}
		if len(vs) > 1 {
			return nil, gate.BadRequest("field %q given more than once", name)
		}
	}
	return r.PostForm, nil
}

// userAuth authenticates from the apikey field, else from the headers, and
// requires access level full.
func (a *API) userAuth(w *listener.Writer, r *http.Request, form url.Values) (keys.Principal, error) {
	var p keys.Principal
	var err error
	if v := form.Get("apikey"); v != "" {
		p, err = listener.AuthenticateCredential(a.opt.Gate, w, r, gate.Credential{Credential: keys.Credential{Secret: v}})
	} else {
		p, err = listener.Authenticate(a.opt.Gate, w, r)
	}
	if err != nil {
		return keys.Principal{}, err
	}
	if !p.Can(keys.PermAdmin) {
		return keys.Principal{}, withUserID(userErrForbidden, &gate.ClientError{Status: http.StatusForbidden,
			Msg: `API key lacks access level full (the "admin" permission)`})
	}
	return p, nil
}

// userLogin verifies the organization's username and password. An unknown
// user and a wrong password give the same answer after the same work: the
// password is always verified, against a dummy hash when there is no user.
func (a *API) userLogin(ctx context.Context, w *listener.Writer, from netip.Addr, username, password string) (keys.Org, error) {
	// Logins are limited per username (hashed: the name is the client's,
	// of any length); an address that logged in as that user before keeps
	// its way in while someone else guesses.
	user := sha256.Sum256([]byte(username))
	if err := a.admitLogin(user, from); err != nil {
		return keys.Org{}, err
	}
	o, err := a.opt.Manage.Store().OrgByUsername(ctx, username)
	if err != nil && !errors.Is(err, keys.ErrNotFound) {
		return keys.Org{}, fmt.Errorf("reading login: %w", err)
	}
	// Each password check holds argon2id's memory (32 MiB): a bounded
	// number run at once, so a flood of logins cannot exhaust the sidecar.
	select {
	case a.logins <- struct{}{}:
		defer func() { <-a.logins }()
	case <-ctx.Done():
		return keys.Org{}, gate.ErrBusy
	}
	if ok := keys.VerifyPassword(o.PasswordHash, password); !ok || o.Username == "" {
		return keys.Org{}, errBadLogin
	}
	if a.loginFails != nil && from.IsValid() {
		a.loginFails.Prove(user, from)
	}
	w.Org = o.ID
	return o, nil
}

// errBadLogin is the one answer to an unknown user and a wrong password.
var errBadLogin = withUserID(userErrUnauthorized, &gate.ClientError{Status: http.StatusForbidden, Msg: "Invalid username or password"})

// admitLogin refuses a login for a username past its limit, unless from
// logged in as that user before. Every other attempt counts against the
// limit before its password is checked, so a burst cannot pass all at once
// while none has failed yet, nor hold the password-check slots.
func (a *API) admitLogin(user [32]byte, from netip.Addr) error {
	if a.loginFails == nil || from.IsValid() && a.loginFails.Proven(user, from) {
		return nil
	}
	now := a.opt.Manage.Now()
	if ok, retry := a.loginFails.Allow(user, now); !ok {
		return &gate.TooManyFailuresError{RetryAfter: retry}
	}
	a.loginFails.Fail(user, now)
	return nil
}

// userKey is a key as /user/apikeys lists it.
type userKey struct {
	Key         string   `json:"key"`
	Created     int64    `json:"created"`
	Comment     string   `json:"comment"`
	AccessLevel string   `json:"access_level"`
	Permissions []string `json:"permissions"`
}

// APIKeys answers the seed 003 route of that name.
func (a *API) APIKeys(w *listener.Writer, r *http.Request) {
	form, err := userForm(w, r, "apikey")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p, err := a.userAuth(w, r, form)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	ks, err := a.opt.Manage.Store().Keys(ctx, p.Key.OrgID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("listing keys: %w", err))
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
	userOK(w, map[string]any{"apikeys": out})
}

// CreateAPIKey answers the seed 003 route of that name.
func (a *API) CreateAPIKey(w *listener.Writer, r *http.Request) {
	fail := func(err error) { a.fail(w, r, err) }
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
	if len([]rune(comment)) > manage.MaxCommentLen {
		fail(withUserID(userErrInvalidComment, &keys.InvalidError{Field: "comment",
			Reason: fmt.Sprintf("must be at most %d characters", manage.MaxCommentLen)}))
		return
	}
	_, hasUser := form["username"]
	_, hasPassword := form["password"]
	login := hasUser || hasPassword
	if login && form.Get("apikey") != "" {
		fail(withUserID(userErrAmbiguous, gate.BadRequest("send either apikey or username and password, not both")))
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	var orgID string
	if login {
		req := gate.RequestOf(r, a.opt.Manage.Now())
		from := guard.AddrKey(a.opt.Gate.ClientAddr(&req))
		settle, err := a.opt.Gate.AdmitLogin(&req, form.Get("username"))
		if err != nil {
			fail(err)
			return
		}
		o, err := a.userLogin(ctx, w, from, form.Get("username"), form.Get("password"))
		switch {
		case err == nil:
			settle(true)
		case errors.Is(err, errBadLogin):
			settle(false)
		}
		if err != nil {
			fail(err)
			return
		}
		orgID = o.ID
	} else {
		p, err := a.userAuth(w, r, form)
		if err != nil {
			if errors.Is(err, keys.ErrNoCredential) {
				err = withUserID(userErrUnauthorized, &gate.ClientError{Status: http.StatusUnauthorized,
					Msg: "Valid API key, or username and password, required"})
			}
			fail(err)
			return
		}
		orgID = p.Key.OrgID
	}
	// A fresh deadline: a login's password check may have used the first.
	kctx, kcancel := a.opt.Manage.Context(r.Context())
	defer kcancel()
	secret, err := a.createUnnamedKey(kctx, orgID, perms, comment)
	if err != nil {
		fail(err)
		return
	}
	userOK(w, map[string]string{"new_key": secret})
}

// createUnnamedKey creates a key for seed 003, which has no key names: the
// key is named "apikey-" + a random UUID, retried on the (unlikely) clash.
func (a *API) createUnnamedKey(ctx context.Context, orgID string, perms []keys.Permission, comment string) (string, error) {
	for attempt := 0; ; attempt++ {
		id, err := keys.NewUUID()
		if err != nil {
			return "", err
		}
		_, secret, err := a.opt.Manage.CreateKey(ctx, manage.NewKey{OrgID: orgID, Name: "apikey-" + id, Permissions: perms, Comment: comment})
		if errors.Is(err, keys.ErrConflict) && attempt < 2 {
			continue
		}
		return secret, err
	}
}

// DeleteAPIKey answers the seed 003 route of that name.
func (a *API) DeleteAPIKey(w *listener.Writer, r *http.Request) {
	fail := func(err error) { a.fail(w, r, err) }
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
	p, err := a.userAuth(w, r, form)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := a.opt.Manage.Context(r.Context())
	defer cancel()
	k, err := a.deleteOwnKey(ctx, p.Key.OrgID, target)
	if err != nil {
		fail(err)
		return
	}
	userOK(w, map[string]any{"deleted_keys": map[string]any{k.UID: map[string]string{"key": k.UID}}})
}

// errDeleteFailed is the seed's answer for a key that is not the caller's
// (or does not exist).
var errDeleteFailed = withUserID(userErrDeleteFailed, &gate.ClientError{Status: http.StatusNotFound,
	Msg: "Apikey deletion failed. Possibly wrong owner."})

// deleteOwnKey deletes the key of org identified by its access_key or its
// secret. Another organization's key is left alone.
func (a *API) deleteOwnKey(ctx context.Context, orgID, target string) (keys.Key, error) {
	var k keys.Key
	var err error
	switch {
	case keys.CheckSecret(target):
		k, err = a.opt.Manage.Store().KeyByHash(ctx, keys.HashSecret(target))
	case len(target) <= 64:
		k, err = a.opt.Manage.Store().KeyByUID(ctx, target)
	default:
		return keys.Key{}, errDeleteFailed
	}
	if errors.Is(err, keys.ErrNotFound) || err == nil && k.OrgID != orgID {
		return keys.Key{}, errDeleteFailed
	}
	if err != nil {
		return keys.Key{}, fmt.Errorf("reading key: %w", err)
	}
	if _, err := a.opt.Manage.DeleteKey(ctx, orgID, k.Name); err != nil {
		if errors.Is(err, keys.ErrNotFound) {
			return keys.Key{}, errDeleteFailed
		}
		return keys.Key{}, err
	}
	return k, nil
}
