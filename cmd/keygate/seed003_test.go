package main

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// Seed 003 (/user/apikeys, /user/create_apikey, /user/delete_apikey), end
// to end on both stores, with both form encodings.

// form is an ordered list of form fields.
type form [][2]string

// multipartBody encodes f as multipart/form-data, as curl -F does.
func multipartBody(t *testing.T, f form) (string, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, kv := range f {
		if err := mw.WriteField(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String(), mw.FormDataContentType()
}

// urlencodedBody encodes f as application/x-www-form-urlencoded.
func urlencodedBody(f form) (string, string) {
	v := url.Values{}
	for _, kv := range f {
		v.Add(kv[0], kv[1])
	}
	return v.Encode(), "application/x-www-form-urlencoded"
}

// postForm posts f to a seed 003 route, multipart or urlencoded.
func postForm(t *testing.T, u string, multi bool, f form, hdr map[string]string) (int, map[string]any, string) {
	t.Helper()
	body, ct := urlencodedBody(f)
	if multi {
		body, ct = multipartBody(t, f)
	}
	h := map[string]string{"Content-Type": ct}
	for k, v := range hdr {
		h[k] = v
	}
	return jsonCall(t, "POST", u, h, body)
}

func TestSeed003(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := &recorder{}
		srv := httptest.NewServer(up)
		defer srv.Close()
		g := startGate(t, withUpstream(env, srv.URL))
		g.seedPlans()
		org := g.createOrg(map[string]any{"name": "Test", "plan_id": 1, "username": "test", "password": "test"})
		other := g.createOrg(map[string]any{"name": "Other", "plan_id": 1, "username": "other", "password": "other-pw"})
		otherKey := g.createKey(other, "theirs", "admin")
		base := "http://" + g.l.Data
		start := time.Now()

		newKey := func(t *testing.T, multi bool, f form) string {
			t.Helper()
			status, m, raw := postForm(t, base+"/user/create_apikey", multi, f, nil)
			if status != 200 || m["status"] != "success" {
				t.Fatalf("create_apikey: %d %s", status, raw)
			}
			checkKinds(t, "response", m, map[string]string{"data": "object", "status": "string"})
			checkKinds(t, "data", m["data"], map[string]string{"new_key": "string"})
			return m["data"].(map[string]any)["new_key"].(string)
		}

		// The seed's create_apikey example, with curl -F (multipart).
		testKey := newKey(t, true, form{{"username", "test"}, {"password", "test"}, {"access_level", "apikey"}, {"comment", "This is a test key"}})
		full := newKey(t, false, form{{"username", "test"}, {"password", "test"}, {"access_level", "full"}})
		basic := newKey(t, true, form{{"apikey", full}, {"access_level", "basic"}, {"comment", strings.Repeat("é", 255)}})

		t.Run("created keys work on the data path at once", func(t *testing.T) {
			for name, secret := range map[string]string{"apikey": testKey, "full": full, "basic": basic} {
				if status, _, body := call(t, "POST", base+"/v1/upload", apiKey(secret), "x"); status != 200 {
					t.Errorf("%s key: %d %s", name, status, body)
				}
			}
			if got := up.last(t).Header.Get("X-Keygate-Org-Id"); got != org {
				t.Errorf("X-Keygate-Org-Id = %q, want %q", got, org)
			}
		})

		// listing checks an apikeys answer and returns its keys.
		listing := func(t *testing.T) func(status int, m map[string]any, raw string) map[string]any {
			return func(status int, m map[string]any, raw string) map[string]any {
				t.Helper()
				if status != 200 || m["status"] != "success" {
					t.Fatalf("apikeys: %d %s", status, raw)
				}
				checkKinds(t, "response", m, map[string]string{"data": "object", "status": "string"})
				checkKinds(t, "data", m["data"], map[string]string{"apikeys": "object"})
				for _, s := range []string{testKey, full, basic} {
					if strings.Contains(raw, s) {
						t.Errorf("the key list shows a secret: %s", raw)
					}
				}
				return m["data"].(map[string]any)["apikeys"].(map[string]any)
			}
		}
		var keysByLevel map[string]string // access level → access_key
		t.Run("apikeys", func(t *testing.T) {
			// The seed's example: curl -F apikey=$apikey.
			ks := listing(t)(postForm(t, base+"/user/apikeys", true, form{{"apikey", full}}, nil))
			if len(ks) != 3 {
				t.Fatalf("want 3 keys, got %v", ks)
			}
			keysByLevel = map[string]string{}
			for id, v := range ks {
				checkKinds(t, "apikey", v, map[string]string{"key": "string", "created": "number", "comment": "string", "access_level": "string", "permissions": "array"})
				item := v.(map[string]any)
				if item["key"] != id || !uuidPattern.MatchString(id) {
					t.Errorf("key %q listed under %q; want its access_key under itself", item["key"], id)
				}
				created := int64(item["created"].(float64))
				if created < start.Unix()-1 || created > time.Now().Unix()+1 {
					t.Errorf("created %d is not the Unix time of creation", created)
				}
				keysByLevel[item["access_level"].(string)] = id
			}
			item := ks[keysByLevel["apikey"]].(map[string]any)
			if item["comment"] != "This is a test key" {
				t.Errorf("comment %q", item["comment"])
			}
			perms, _ := json.Marshal(item["permissions"])
			if string(perms) != `["read","write","pin","unpin"]` {
				t.Errorf("apikey level permissions %s", perms)
			}
			if len(keysByLevel) != 3 {
				t.Errorf("levels: %v", keysByLevel)
			}

			for name, get := range map[string]func() (int, map[string]any, string){
				"urlencoded": func() (int, map[string]any, string) {
					return postForm(t, base+"/user/apikeys", false, form{{"apikey", full}}, nil)
				},
				"GET with header": func() (int, map[string]any, string) {
					return jsonCall(t, "GET", base+"/user/apikeys", map[string]string{"Authorization": "Bearer " + full}, "")
				},
				"POST with pair headers": func() (int, map[string]any, string) {
					return jsonCall(t, "POST", base+"/user/apikeys", map[string]string{"X-Access-Key": keysByLevel["full"], "X-Access-Secret": full}, "")
				},
			} {
				if got := listing(t)(get()); len(got) != 3 {
					t.Errorf("%s: %v", name, got)
				}
			}
		})

		t.Run("login failures are indistinguishable", func(t *testing.T) {
			f := form{{"username", "test"}, {"password", "wrong"}, {"access_level", "full"}}
			s1, _, raw1 := postForm(t, base+"/user/create_apikey", true, f, nil)
			f[0][1], f[1][1] = "nobody", "test"
			s2, _, raw2 := postForm(t, base+"/user/create_apikey", true, f, nil)
			want := `{"status":"error","error_id":"user/unauthorized","message":"Invalid username or password"}`
			if s1 != 403 || s2 != 403 || raw1 != want || raw2 != want {
				t.Errorf("wrong password: %d %s; unknown user: %d %s; want 403 %s", s1, raw1, s2, raw2, want)
			}
		})

		t.Run("errors change nothing", func(t *testing.T) {
			before, beforeOther := g.keyNames(org), g.keyNames(other)
			big := strings.Repeat("c", 1<<20)
			mp, _ := multipartBody(t, form{{"apikey", full}})
			var fileBody bytes.Buffer
			fw := multipart.NewWriter(&fileBody)
			_ = fw.WriteField("apikey", full)
			part, _ := fw.CreateFormFile("upload", "x.txt")
			_, _ = part.Write([]byte("data"))
			_ = fw.Close()
			cases := []struct {
				name, path string
				hdr        map[string]string
				body       string
				status     int
				id, msg    string
			}{
				{"invalid access level", "/user/create_apikey", nil, "", 400, "user/create_apikey/invalid_access_level", ``},
				{"missing access level", "/user/create_apikey", nil, "", 400, "user/create_apikey/invalid_access_level", ``},
				{"comment too long", "/user/create_apikey", nil, "", 400, "user/create_apikey/invalid_comment", "invalid comment: must be at most 255 characters"},
				{"no credential", "/user/create_apikey", nil, "", 401, "user/unauthorized", "Valid API key, or username and password, required"},
				{"no credential for apikeys", "/user/apikeys", nil, "", 401, "user/unauthorized", "Valid API key required"},
				{"apikey only in the query string", "/user/apikeys?apikey=" + url.QueryEscape(full), nil, "", 401, "user/unauthorized", "Valid API key required"},
				{"invalid apikey", "/user/apikeys", nil, "", 403, "user/unauthorized", "Invalid API key"},
				{"basic key lists", "/user/apikeys", nil, "", 403, "user/forbidden", `API key lacks access level full (the "admin" permission)`},
				{"basic key creates", "/user/create_apikey", nil, "", 403, "user/forbidden", `API key lacks access level full (the "admin" permission)`},
				{"basic key deletes", "/user/delete_apikey", nil, "", 403, "user/forbidden", `API key lacks access level full (the "admin" permission)`},
				{"apikey and login", "/user/create_apikey", nil, "", 400, "user/create_apikey/ambiguous_credentials", "send either apikey or username and password, not both"},
				{"unknown field", "/user/create_apikey", nil, "", 400, "user/bad_request", `unknown field "level"`},
				{"field twice", "/user/create_apikey", nil, "", 400, "user/bad_request", `field "access_level" given more than once`},
				{"oversized body", "/user/create_apikey", nil, "", 413, "user/request_too_large", "Request body larger than 1048576 bytes"},
				{"malformed multipart", "/user/apikeys", map[string]string{"Content-Type": "multipart/form-data; boundary=nope"}, mp, 400, "user/bad_request", "malformed form body"},
				{"multipart without boundary", "/user/apikeys", map[string]string{"Content-Type": "multipart/form-data"}, mp, 400, "user/bad_request", "malformed form body"},
				{"malformed urlencoded", "/user/apikeys", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "apikey=%zz", 400, "user/bad_request", "malformed form body"},
				{"json body", "/user/apikeys", map[string]string{"Content-Type": "application/json"}, `{"apikey":"x"}`, 415, "user/unsupported_media_type", "send fields as application/x-www-form-urlencoded or multipart/form-data"},
				{"file part", "/user/apikeys", map[string]string{"Content-Type": fw.FormDataContentType()}, fileBody.String(), 400, "user/bad_request", "file parts are not accepted; send fields only"},
				{"missing delete_key", "/user/delete_apikey", nil, "", 400, "user/delete_apikey/missing_delete_key", "invalid delete_key: is required"},
				{"delete unknown key", "/user/delete_apikey", nil, "", 404, "user/delete_apikey/failed", "Apikey deletion failed. Possibly wrong owner."},
				{"delete another owner's key by access_key", "/user/delete_apikey", nil, "", 404, "user/delete_apikey/failed", "Apikey deletion failed. Possibly wrong owner."},
				{"delete another owner's key by secret", "/user/delete_apikey", nil, "", 404, "user/delete_apikey/failed", "Apikey deletion failed. Possibly wrong owner."},
			}
			forms := map[string]form{
				"invalid access level":                     {{"apikey", full}, {"access_level", "root"}},
				"missing access level":                     {{"apikey", full}},
				"comment too long":                         {{"apikey", full}, {"access_level", "basic"}, {"comment", strings.Repeat("c", 256)}},
				"no credential":                            {{"access_level", "basic"}},
				"invalid apikey":                           {{"apikey", "kg_nope"}},
				"basic key lists":                          {{"apikey", basic}},
				"basic key creates":                        {{"apikey", basic}, {"access_level", "basic"}},
				"basic key deletes":                        {{"apikey", basic}, {"delete_key", keysByLevel["full"]}},
				"apikey and login":                         {{"apikey", full}, {"username", "test"}, {"password", "test"}, {"access_level", "basic"}},
				"unknown field":                            {{"apikey", full}, {"level", "basic"}},
				"field twice":                              {{"apikey", full}, {"access_level", "basic"}, {"access_level", "full"}},
				"oversized body":                           {{"apikey", full}, {"access_level", "basic"}, {"comment", big}},
				"missing delete_key":                       {{"apikey", full}},
				"delete unknown key":                       {{"apikey", full}, {"delete_key", "00000000-0000-4000-8000-000000000000"}},
				"delete another owner's key by access_key": {{"apikey", full}, {"delete_key", otherKey.AccessKey}},
				"delete another owner's key by secret":     {{"apikey", full}, {"delete_key", otherKey.AccessSecret}},
			}
			for _, tc := range cases {
				for _, multi := range []bool{true, false} {
					name := tc.name + map[bool]string{true: " (multipart)", false: " (urlencoded)"}[multi]
					if tc.body != "" && !multi {
						continue // a raw body: sent once, as it is
					}
					t.Run(name, func(t *testing.T) {
						var status int
						var m map[string]any
						var raw string
						if tc.body != "" {
							status, m, raw = jsonCall(t, "POST", base+tc.path, tc.hdr, tc.body)
						} else {
							status, m, raw = postForm(t, base+tc.path, multi, forms[tc.name], tc.hdr)
						}
						checkKinds(t, "error", m, map[string]string{"status": "string", "error_id": "string", "message": "string"})
						if status != tc.status || m["status"] != "error" || m["error_id"] != tc.id || (tc.msg != "" && m["message"] != tc.msg) {
							t.Errorf("got %d %s, want %d %s %q", status, raw, tc.status, tc.id, tc.msg)
						}
					})
				}
			}
			if after := g.keyNames(org); !slices.Equal(before, after) {
				t.Errorf("bad input changed the keys: %v → %v", before, after)
			}
			if after := g.keyNames(other); !slices.Equal(beforeOther, after) {
				t.Errorf("bad input changed the other owner's keys: %v → %v", beforeOther, after)
			}
			if status, _, body := call(t, "GET", base+"/", apiKey(otherKey.AccessSecret), ""); status != 200 {
				t.Errorf("the other owner's key stopped working: %d %s", status, body)
			}
		})

		t.Run("delete_apikey by access_key", func(t *testing.T) {
			// The seed's example: curl -F apikey=$apikey -F delete_key=….
			id := keysByLevel["apikey"]
			status, _, raw := postForm(t, base+"/user/delete_apikey", true, form{{"apikey", full}, {"delete_key", id}}, nil)
			want := `{"status":"success","data":{"deleted_keys":{"` + id + `":{"key":"` + id + `"}}}}`
			if status != 200 || raw != want {
				t.Fatalf("got %d %s, want %s", status, raw, want)
			}
			if status, _, body := call(t, "GET", base+"/", apiKey(testKey), ""); status != 403 {
				t.Errorf("deleted key: %d %s", status, body)
			}
		})

		t.Run("delete_apikey by secret", func(t *testing.T) {
			id := keysByLevel["basic"]
			status, _, raw := postForm(t, base+"/user/delete_apikey", false, form{{"apikey", full}, {"delete_key", basic}}, nil)
			want := `{"status":"success","data":{"deleted_keys":{"` + id + `":{"key":"` + id + `"}}}}`
			if status != 200 || raw != want {
				t.Fatalf("got %d %s, want %s", status, raw, want)
			}
			if strings.Contains(raw, basic) {
				t.Errorf("the answer repeats the secret")
			}
			if status, _, body := call(t, "GET", base+"/", apiKey(basic), ""); status != 403 {
				t.Errorf("deleted key: %d %s", status, body)
			}
		})

		for _, s := range []string{full, basic, testKey, "other-pw"} {
			if strings.Contains(g.logs.String(), s) {
				t.Errorf("log output contains a secret or password")
			}
		}
	})
}
