package gate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// exampleSecret is the secret of the README's worked example.
const exampleSecret = "kg_PcFR7vJmUCpD2TTuQdhEVqpHwqLUgKL21ygT63uL6JQDt6FX"

// handMAC computes the formula directly: BASE64(HMAC_SHA256(s, secret)).
func handMAC(s, secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(s))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestSignKnownAnswers(t *testing.T) {
	cases := []struct {
		name, method, path string
		query              url.Values
		// stringToSign is written out by hand from the formula.
		stringToSign string
		// want, when set, is a signature computed outside Go (openssl).
		want string
	}{
		{
			name: "GET with several params, repeated key, README example", method: "GET", path: "/api/v0/keys",
			query:        url.Values{"tag": {"été", "a+b"}, "name": {"John Doe"}, "ts": {"1700000000"}, "limit": {"10"}},
			stringToSign: "GET\n/api/v0/keys\nlimit=10&name=John+Doe&tag=a%2Bb&tag=%C3%A9t%C3%A9&ts=1700000000",
			want:         "7RG+JWaIa2iI1XMz+/VRLhcvuE7mEIFEUVziGAi5ATg=",
		},
		{
			name: "POST without params", method: "POST", path: "/api/v0/key",
			stringToSign: "POST\n/api/v0/key\n",
			want:         "/oevb8psznT6IMM9W2qmYOv0jWT2AYtg/e7Xi9RZayU=",
		},
		{
			name: "params needing URL-encoding", method: "get", path: "/v1/search",
			query: url.Values{
				"q":      {"a b&c=d"},
				"plus":   {"1+1"},
				"emoji":  {"☃"},
				"empty":  {""},
				"a key":  {"/?#"},
				"ts":     {"1700000123"},
				"zürich": {"100%"},
			},
			stringToSign: "GET\n/v1/search\na+key=%2F%3F%23&emoji=%E2%98%83&empty=&plus=1%2B1&q=a+b%26c%3Dd&ts=1700000123&z%C3%BCrich=100%25",
		},
		{
			name: "path keeps its percent-encoding", method: "DELETE", path: "/files/a%2Fb%20c",
			query:        url.Values{"ts": {"1"}},
			stringToSign: "DELETE\n/files/a%2Fb%20c\nts=1",
		},
		{
			name: "values of one key sorted", method: "GET", path: "/",
			query:        url.Values{"k": {"b", "a", "B"}, "ts": {"5"}},
			stringToSign: "GET\n/\nk=B&k=a&k=b&ts=5",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := StringToSign(tc.method, tc.path, tc.query); got != tc.stringToSign {
				t.Errorf("StringToSign = %q, want %q", got, tc.stringToSign)
			}
			want := handMAC(tc.stringToSign, exampleSecret)
			if tc.want != "" && want != tc.want {
				t.Fatalf("hand-computed HMAC %s differs from the openssl vector %s", want, tc.want)
			}
			if got := SignRequest(tc.method, tc.path, tc.query, exampleSecret); got != want {
				t.Errorf("SignRequest = %s, want %s", got, want)
			}
		})
	}
}

// TestParseSignedCanonicalises checks that the server side rebuilds the
// same string from a raw query however the client encoded it.
func TestParseSignedCanonicalises(t *testing.T) {
	now := time.Unix(1700000000, 0)
	want := "GET\n/x\na=1&name=John+Doe&plus=%2B&ts=1700000000"
	for _, raw := range []string{
		"ts=1700000000&name=John+Doe&a=1&plus=%2B",
		"name=John%20Doe&plus=%2b&a=1&ts=1700000000",
		"a=1&ts=1700000000&plus=%2B&name=John%20Doe",
	} {
		sr, err := parseSigned("GET", "/x", raw, "", now, time.Minute)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if sr.stringToSign != want {
			t.Errorf("%s: string to sign %q, want %q", raw, sr.stringToSign, want)
		}
	}
	if _, err := parseSigned("GET", "/x", "a=%zz&ts=1700000000", "", now, time.Minute); err == nil {
		t.Error("malformed query accepted")
	}
}

func TestVerifySignature(t *testing.T) {
	now := time.Unix(1700000000, 0)
	q := url.Values{"a": {"1"}, "ts": {"1700000000"}}
	sig := SignRequest("GET", "/x", q, exampleSecret)
	sr, err := parseSigned("GET", "/x", q.Encode(), sig, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !sr.verify([]byte(exampleSecret)) {
		t.Error("valid signature refused")
	}
	if sr.verify([]byte(exampleSecret + "x")) {
		t.Error("wrong secret accepted")
	}
	unpadded, err := parseSigned("GET", "/x", q.Encode(), strings.TrimRight(sig, "="), now, time.Minute)
	if err != nil || !unpadded.verify([]byte(exampleSecret)) {
		t.Errorf("unpadded signature refused: %v", err)
	}
	if unpadded.nonce(time.Minute) != sr.nonce(time.Minute) {
		t.Error("padded and unpadded forms of one signature are different nonces: a replay could slip through")
	}
	if n := sr.nonce(time.Minute); !n.until.Equal(now.Add(time.Minute + nonceMargin)) {
		t.Errorf("nonce until %v, want ts + skew + margin", n.until)
	}
	for _, bad := range []string{"", "not base64!", base64.StdEncoding.EncodeToString([]byte("short"))} {
		sr, _ := parseSigned("GET", "/x", q.Encode(), bad, now, time.Minute)
		if sr.verify([]byte(exampleSecret)) {
			t.Errorf("signature %q accepted", bad)
		}
	}
}

// FuzzSignedRequest feeds arbitrary requests to the canonicalisation and
// the verification: they must not panic, and what SignRequest signs must
// verify.
func FuzzSignedRequest(f *testing.F) {
	f.Add("GET", "/api/v0/keys", "limit=10&name=John%20Doe&ts=1700000000", "7RG+JWaIa2iI1XMz+/VRLhcvuE7mEIFEUVziGAi5ATg=", exampleSecret)
	f.Add("post", "/a%2Fb", "", "", "")
	f.Add("GET", "/", "ts=1700000000&ts=1", "====", "s")
	f.Add("GET", "/", "a=%zz;b&ts=1700000000", "AAAA", "s")
	f.Fuzz(func(t *testing.T, method, path, rawQuery, sig, secret string) {
		now := time.Unix(1700000000, 0)
		sr, err := parseSigned(method, path, rawQuery, sig, now, time.Hour)
		if err != nil {
			return
		}
		_ = sr.verify([]byte(secret))
		q, _ := url.ParseQuery(rawQuery)
		good := SignRequest(method, path, q, secret)
		sr2, err := parseSigned(method, path, rawQuery, good, now, time.Hour)
		if err != nil {
			t.Fatalf("second parse failed: %v", err)
		}
		if !sr2.verify([]byte(secret)) {
			t.Fatalf("SignRequest's signature does not verify: %q %q %q", method, path, rawQuery)
		}
	})
}

func FuzzCredentialFrom(f *testing.F) {
	f.Add("", "", "", "", "")
	f.Add("Bearer kg_x", "", "", "", "")
	f.Add("", "kg_x", "", "", "")
	f.Add("", "", "6f1c5a3e-8b2d-4c7a-9e0f-1a2b3c4d5e6f", "kg_x", "")
	f.Add("bearer  ", "", "ak", "", "c2ln")
	f.Fuzz(func(t *testing.T, authz, apiKey, accessKey, accessSecret, signature string) {
		h := http.Header{}
		for k, v := range map[string]string{HeaderAuthorization: authz, HeaderAPIKey: apiKey, HeaderAccessKey: accessKey, HeaderAccessSecret: accessSecret, HeaderAccessSignature: signature} {
			if v != "" {
				h.Set(k, v)
			}
		}
		c, err := ParseCredential(h)
		if err != nil {
			if c != (Credential{}) {
				t.Errorf("error %v with a credential %+v", err, c)
			}
			return
		}
		if c.Signature == "" && c.Secret == "" {
			t.Errorf("credential without secret or signature: %+v", c)
		}
		if c.Signature != "" && c.AccessKey == "" {
			t.Errorf("signature without access key: %+v", c)
		}
	})
}
