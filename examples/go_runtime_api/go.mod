module example.com/go_runtime_api

go 1.19
