// A Lambda function in Go that speaks the Runtime API with net/http alone, for the tests.
//
// Each event's page (state.page, from 0) inserts one row into `invocations` telling what
// this process saw: the Runtime API's headers, Lambda's environment variables and its pid.
// There are secrets.pages pages (default 3). On page secrets.fail_on_page it posts an
// error without an errorType, naming its type only in the header, as the API allows.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
)

type event struct {
	State   struct{ Page int } `json:"state"`
	Secrets struct {
		Pages      *int `json:"pages"`
		FailOnPage *int `json:"fail_on_page"`
	} `json:"secrets"`
	SyncID string `json:"sync_id"`
}

func main() {
	runtime := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
	fmt.Fprintf(os.Stderr, "go client started, pid %d\n", os.Getpid())
	for served := 1; ; served++ {
		next, err := http.Get(runtime + "/invocation/next")
		if err != nil {
			log.Fatalf("no next event: %v", err)
		}
		var e event
		decoded := json.NewDecoder(next.Body).Decode(&e)
		next.Body.Close()
		id := next.Header.Get("Lambda-Runtime-Aws-Request-Id")
		if decoded != nil {
			post(runtime+"/invocation/"+id+"/error", "Go.BadEvent", map[string]any{"errorMessage": decoded.Error()})
			continue
		}
		fmt.Printf("go client: page %d, request %s\n", e.State.Page, id)
		if e.Secrets.FailOnPage != nil && *e.Secrets.FailOnPage == e.State.Page {
			message := fmt.Sprintf("page %d refused by upstream", e.State.Page)
			post(runtime+"/invocation/"+id+"/error", "Upstream.Refused", map[string]any{"errorMessage": message})
			continue
		}
		pages := 3
		if e.Secrets.Pages != nil {
			pages = *e.Secrets.Pages
		}
		deadline, _ := strconv.ParseInt(next.Header.Get("Lambda-Runtime-Deadline-Ms"), 10, 64)
		row := map[string]any{
			"page":          e.State.Page,
			"served":        served,
			"pid":           os.Getpid(),
			"sync_id":       e.SyncID,
			"request_id":    id,
			"deadline_ms":   deadline,
			"function_arn":  next.Header.Get("Lambda-Runtime-Invoked-Function-Arn"),
			"trace_id":      next.Header.Get("Lambda-Runtime-Trace-Id"),
			"content_type":  next.Header.Get("Content-Type"),
			"handler":       os.Getenv("_HANDLER"),
			"task_root":     os.Getenv("LAMBDA_TASK_ROOT"),
			"function_name": os.Getenv("AWS_LAMBDA_FUNCTION_NAME"),
			"memory_size":   os.Getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
			"version":       os.Getenv("AWS_LAMBDA_FUNCTION_VERSION"),
			"region":        os.Getenv("AWS_REGION"),
			"runtime_api":   os.Getenv("AWS_LAMBDA_RUNTIME_API"),
			"working_dir":   must(os.Getwd()),
		}
		post(runtime+"/invocation/"+id+"/response", "", map[string]any{
			"state":   map[string]int{"page": e.State.Page + 1},
			"insert":  map[string]any{"invocations": []any{row}},
			"schema":  map[string]any{"invocations": map[string]any{"primary_key": []string{"page"}}},
			"hasMore": e.State.Page+1 < pages,
		})
	}
}

func post(url, errorType string, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		log.Fatalf("cannot encode the answer: %v", err)
	}
	request, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		log.Fatalf("bad URL %s: %v", url, err)
	}
	if errorType != "" {
		request.Header.Set("Lambda-Runtime-Function-Error-Type", errorType)
	}
	answer, err := http.DefaultClient.Do(request)
	if err != nil {
		log.Fatalf("cannot post to %s: %v", url, err)
	}
	answer.Body.Close()
	if answer.StatusCode != http.StatusAccepted {
		log.Fatalf("%s answered %s", url, answer.Status)
	}
}

func must(value string, err error) string {
	if err != nil {
		log.Fatal(err)
	}
	return value
}
