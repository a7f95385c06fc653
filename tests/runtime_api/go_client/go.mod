module connector-runtime.test/goclient

go 1.19
