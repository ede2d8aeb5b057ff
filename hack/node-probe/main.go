// node-probe is the real node's own test image: a static HTTP server that reports who it is and, from inside a
// pod, resolves names and fetches URLs, so tests can check pod networking, Services and cluster DNS without
// any other image.
//
//	GET /            -> "node-probe <hostname> uid=<uid>"
//	GET /resolve?name=N  -> the addresses N resolves to, one per line (404 when it does not resolve)
//	GET /fetch?url=U     -> the body of U (502 when it fails)
//	GET /write?path=P    -> 201 when P could be created, 500 with the error otherwise
//	GET /healthz     -> "ok"
//
// Every request but /healthz is logged to stdout ("request GET /resolve").
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	addr := ":8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	hostname, _ := os.Hostname()
	// A new connection per fetch, so that every fetch through a Service is balanced anew by kube-proxy.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "node-probe %s uid=%d\n", hostname, os.Getuid())
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.LookupHost(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		fmt.Fprintln(w, strings.Join(addrs, "\n"))
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		if err := os.WriteFile(r.URL.Query().Get("path"), []byte("probe\n"), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("/fetch", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			fmt.Printf("request %s %s\n", r.Method, r.URL.Path)
		}
		mux.ServeHTTP(w, r)
	})
	if err := http.ListenAndServe(addr, logged); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
