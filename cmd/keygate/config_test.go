package main

import (
	"bufio"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestExampleEnvInSync keeps config.example.env and the config struct in
// step: every variable documented with a comment, with the struct's default.
func TestExampleEnvInSync(t *testing.T) {
	f, err := os.Open("../../config.example.env")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	documented := map[string]string{}
	commented := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "#"):
			commented = true
		case line == "":
			commented = false
		default:
			k, v, _ := strings.Cut(line, "=")
			if !commented {
				t.Errorf("%s has no comment", k)
			}
			documented[k] = v
			commented = false
		}
	}
	typ := reflect.TypeFor[config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		name = envPrefix + name
		v, ok := documented[name]
		if !ok {
			t.Errorf("%s is not in config.example.env", name)
			continue
		}
		delete(documented, name)
		if def, has := f.Tag.Lookup("envDefault"); has && def != v {
			t.Errorf("%s: example says %q, default is %q", name, v, def)
		}
	}
	for k := range documented {
		t.Errorf("config.example.env documents %s, which keygate does not read", k)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"missing upstream", map[string]string{}, []string{"KEYGATE_UPSTREAM_URL: required but not set"}},
		{"relative upstream", map[string]string{"KEYGATE_UPSTREAM_URL": "localhost:8080"}, []string{"KEYGATE_UPSTREAM_URL: want an absolute http:// or https:// URL"}},
		{"bad duration", map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:1", "KEYGATE_REDIS_TIMEOUT": "fast"}, []string{"KEYGATE_REDIS_TIMEOUT: cannot parse as a duration"}},
		{"several problems", map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:1", "KEYGATE_FAILURE_MODE": "maybe", "KEYGATE_REDIS_URL": "http://x", "KEYGATE_SECRET_KEY": "c2hvcnQ="},
			[]string{"KEYGATE_FAILURE_MODE: want open or closed", "KEYGATE_REDIS_URL: want a redis://", "KEYGATE_SECRET_KEY: want 32 bytes"}},
		{"tiny auth cache", map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:1", "KEYGATE_AUTH_CACHE_BYTES": "1000"}, []string{"KEYGATE_AUTH_CACHE_BYTES: must be at least 65536"}},
		{"bad log format", map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:1", "KEYGATE_LOG_FORMAT": "xml"}, []string{"KEYGATE_LOG_FORMAT: want json or console"}},
		{"bad authz address", map[string]string{"KEYGATE_AUTHZ_ADDR": "8001"}, []string{"KEYGATE_AUTHZ_ADDR: want host:port"}},
		{"authz with a bad upstream", map[string]string{"KEYGATE_AUTHZ_ADDR": ":8001", "KEYGATE_UPSTREAM_URL": "x"}, []string{"KEYGATE_UPSTREAM_URL: want an absolute"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(tc.env)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// An authorization service alone needs no upstream.
	for _, env := range []map[string]string{{"KEYGATE_AUTHZ_ADDR": "127.0.0.1:8001"}, {"KEYGATE_AUTHZ_GRPC_ADDR": "127.0.0.1:8002"}} {
		if cfg, err := loadConfig(env); err != nil || cfg.hasUpstream() {
			t.Errorf("%v: %v (upstream %v)", env, err, cfg.hasUpstream())
		}
	}
	cfg, err := loadConfig(map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RedisTimeout != 250*time.Millisecond || cfg.FailureMode != "open" || cfg.ListenAddr != ":8000" || cfg.StaleAuth != 15*time.Minute || cfg.AuthCacheBytes != 64<<20 {
		t.Errorf("defaults: %+v", cfg)
	}
}
