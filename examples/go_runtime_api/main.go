// A connector written in Go: a Lambda function for the `provided` runtimes that speaks
// AWS Lambda's Runtime API with the standard library alone. The same binary runs on
// Lambda (provided.al2023) and here, where connector-runtime serves the Runtime API on
// loopback and starts it once per sync.
//
// Build it: cd examples/go_runtime_api && go build -o bootstrap .      (Go 1.19 or later)
// Run it:   connector run
// Look:     python ../show.py warehouse.duckdb
// For Lambda, build for Linux and zip it: GOOS=linux GOARCH=arm64 go build -o bootstrap .
//
// The "API" is a help desk's tickets, pageSize per call after the `cursor` in `state`, in
// the order they changed. A ticket that was merged into another is deleted.
package main

import (
	"bytes"
	"encoding/json"
	"log"
	"net/http"
	"os"
)

const pageSize = 3

type ticket struct {
	ID        int    `json:"id"`
	Subject   string `json:"subject"`
	Status    string `json:"status"`
	UpdatedAt string `json:"updated_at"`
	MergedTo  int    `json:"-"`
}

var changes = []ticket{
	{ID: 101, Subject: "Cannot log in", Status: "open", UpdatedAt: "2025-03-01T09:00:00Z"},
	{ID: 102, Subject: "Invoice missing VAT number", Status: "open", UpdatedAt: "2025-03-01T09:40:00Z"},
	{ID: 103, Subject: "Login page times out", Status: "open", UpdatedAt: "2025-03-01T10:05:00Z"},
	{ID: 101, Subject: "Cannot log in", Status: "solved", UpdatedAt: "2025-03-02T08:00:00Z"},
	{ID: 103, MergedTo: 101, UpdatedAt: "2025-03-02T08:01:00Z"},
	{ID: 104, Subject: "Export to CSV", Status: "pending", UpdatedAt: "2025-03-02T11:30:00Z"},
	{ID: 105, Subject: "Dark mode", Status: "open", UpdatedAt: "2025-03-03T16:20:00Z"},
}

// The request and the answer of the function protocol (Fivetran's Lambda connector).
type request struct {
	State struct {
		Cursor int `json:"cursor"`
	} `json:"state"`
}

type answer struct {
	State   map[string]int              `json:"state"`
	Insert  map[string][]ticket         `json:"insert"`
	Delete  map[string][]map[string]int `json:"delete"`
	Schema  map[string]any              `json:"schema"`
	HasMore bool                        `json:"hasMore"`
}

// handle answers one request: the changes after the cursor, one page of them.
func handle(req request) answer {
	start := req.State.Cursor
	end := start + pageSize
	if end > len(changes) {
		end = len(changes)
	}
	page := answer{
		State:  map[string]int{"cursor": end},
		Insert: map[string][]ticket{"tickets": {}},
		Delete: map[string][]map[string]int{"tickets": {}},
		Schema: map[string]any{"tickets": map[string]any{
			"primary_key": []string{"id"},
			"columns":     map[string]string{"updated_at": "UTC_DATETIME"},
		}},
		HasMore: end < len(changes),
	}
	for _, change := range changes[start:end] {
		if change.MergedTo != 0 {
			page.Delete["tickets"] = append(page.Delete["tickets"], map[string]int{"id": change.ID})
		} else {
			page.Insert["tickets"] = append(page.Insert["tickets"], change)
		}
	}
	log.Printf("changes %d to %d: %d upserts, %d deletes", start, end, len(page.Insert["tickets"]), len(page.Delete["tickets"]))
	return page
}

// main is the runtime: ask for the next event, answer it, forever.
func main() {
	runtime := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
	for {
		next, err := http.Get(runtime + "/invocation/next")
		if err != nil {
			log.Fatalf("cannot get the next event: %v", err)
		}
		id := next.Header.Get("Lambda-Runtime-Aws-Request-Id")
		var req request
		err = json.NewDecoder(next.Body).Decode(&req)
		next.Body.Close()
		if err != nil {
			failure := map[string]string{"errorMessage": err.Error(), "errorType": "BadRequest"}
			post(runtime+"/invocation/"+id+"/error", failure)
			continue
		}
		post(runtime+"/invocation/"+id+"/response", handle(req))
	}
}

func post(url string, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		log.Fatalf("cannot encode the answer: %v", err)
	}
	reply, err := http.Post(url, "application/json", bytes.NewReader(data))
	if err != nil {
		log.Fatalf("cannot post the answer: %v", err)
	}
	reply.Body.Close()
	if reply.StatusCode != http.StatusAccepted {
		log.Fatalf("the Runtime API refused the answer: %s", reply.Status)
	}
}
