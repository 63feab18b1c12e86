// Command demo-upstream is a tiny backend for trying keygate: it echoes what
// it received, including the identity headers keygate adds, and streams
// server-sent events on /events.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strings"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := range 5 {
			fmt.Fprintf(w, "data: tick %d\n\n", i)
			_ = rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		identity := map[string]string{}
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-Keygate-") || strings.HasPrefix(k, "X-Forwarded-") {
				identity[k] = strings.Join(v, ", ")
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "path": r.URL.Path, "headers": identity})
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Printf("demo upstream listening on %s", *addr)
	log.Fatal(srv.ListenAndServe())
}
