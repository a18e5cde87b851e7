//! A small pickle reader for TorchScript archives' `data.pkl`: modules are `NEWOBJ` instances
//! whose attribute dicts arrive by `BUILD`, tensors are `torch._utils._rebuild_tensor_v2`
//! reductions over persistent storages. Nothing is executed: classes and functions stay names.
//! Values are reference-counted, so a hostile file cannot grow memory by repeating memo
//! entries; sizes are bounded by the input.

use std::collections::HashMap;
use std::rc::Rc;

/// A pickled value (every field is kept, read or not, for `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Rc<Value>>),
    List(Vec<Rc<Value>>),
    Dict(Vec<(Rc<Value>, Rc<Value>)>),
    /// `module name` of a `GLOBAL`.
    Global(String),
    /// An instance: its class and the state given by `BUILD`.
    Object {
        class: String,
        state: Option<Rc<Value>>,
    },
    /// A persistent storage: `(dtype class, key, numel)`.
    Storage {
        dtype: String,
        key: String,
        numel: usize,
    },
    /// A tensor view of a storage.
    Tensor(TensorRef),
    /// Any other reduction, kept as the function's name.
    Reduced(String),
}

/// Where a tensor's values are.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub dtype: String,
    pub key: String,
    pub numel: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl Value {
    /// The attribute `name` of an object's state dict (or of a dict).
    pub fn attr(&self, name: &str) -> Option<&Rc<Value>> {
        let dict = match self {
            Value::Object { state: Some(s), .. } => s.as_ref(),
            d @ Value::Dict(_) => d,
            _ => return None,
        };
        match dict {
            Value::Dict(items) => {
                items.iter().find(|(k, _)| matches!(k.as_ref(), Value::Str(s) if s == name)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub fn class(&self) -> Option<&str> {
        match self {
            Value::Object { class, .. } => Some(class),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// An int or a sequence of ints.
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match self {
            Value::Int(i) => Some(vec![*i]),
            Value::Tuple(v) | Value::List(v) => v.iter().map(|x| x.as_int()).collect(),
            _ => None,
        }
    }
}

/// Reads a pickle. Errors name the opcode offset.
pub(crate) fn parse(data: &[u8]) -> Result<Rc<Value>, String> {
    let mut stack: Vec<Rc<Value>> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Rc<Value>> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= data.len()).ok_or_else(|| format!("truncated at byte {pos}"))?;
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let line = |pos: &mut usize| -> Result<String, String> {
        let rest = &data[*pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| format!("unterminated line at byte {pos}"))?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| format!("bad text at byte {pos}"))?;
        *pos += n + 1;
        Ok(s)
    };
    loop {
        let at = pos;
        let op = *take(&mut pos, 1)?.first().expect("one byte");
        let pop = |stack: &mut Vec<Rc<Value>>| stack.pop().ok_or_else(|| format!("stack underflow at byte {at}"));
        let pop_mark = |stack: &mut Vec<Rc<Value>>, marks: &mut Vec<usize>| -> Result<Vec<Rc<Value>>, String> {
            let m = marks.pop().ok_or_else(|| format!("no mark at byte {at}"))?;
            if m > stack.len() {
                return Err(format!("mark past the stack at byte {at}"));
            }
            Ok(stack.split_off(m))
        };
        match op {
            0x80 => {
                take(&mut pos, 1)?;
            }
            b'.' => return pop(&mut stack),
            b'c' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Rc::new(Value::Global(format!("{module}.{name}"))));
            }
            b'q' => {
                let k = take(&mut pos, 1)?[0] as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| format!("empty stack at byte {at}"))?);
            }
            b'r' => {
                let k = u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes"));
                memo.insert(k, stack.last().cloned().ok_or_else(|| format!("empty stack at byte {at}"))?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| format!("empty stack at byte {at}"))?);
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    take(&mut pos, 1)?[0] as u32
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes"))
                };
                stack.push(memo.get(&k).cloned().ok_or_else(|| format!("unknown memo {k} at byte {at}"))?);
            }
            b')' => stack.push(Rc::new(Value::Tuple(Vec::new()))),
            b']' => stack.push(Rc::new(Value::List(Vec::new()))),
            b'}' => stack.push(Rc::new(Value::Dict(Vec::new()))),
            b'(' => marks.push(stack.len()),
            b't' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(Rc::new(Value::Tuple(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(format!("stack underflow at byte {at}"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Rc::new(Value::Tuple(items)));
            }
            b'X' | 0x8c => {
                let n = if op == b'X' {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes")) as usize
                } else {
                    take(&mut pos, 1)?[0] as usize
                };
                let s = String::from_utf8(take(&mut pos, n)?.to_vec()).map_err(|_| format!("bad text at byte {at}"))?;
                stack.push(Rc::new(Value::Str(s)));
            }
            0x88 => stack.push(Rc::new(Value::Bool(true))),
            0x89 => stack.push(Rc::new(Value::Bool(false))),
            b'N' => stack.push(Rc::new(Value::None)),
            b'K' => stack.push(Rc::new(Value::Int(take(&mut pos, 1)?[0] as i64))),
            b'M' => {
                stack.push(Rc::new(Value::Int(u16::from_le_bytes(take(&mut pos, 2)?.try_into().expect("2")) as i64)))
            }
            b'J' => {
                stack.push(Rc::new(Value::Int(i32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4")) as i64)))
            }
            0x8a => {
                let n = take(&mut pos, 1)?[0] as usize;
                if n > 8 {
                    return Err(format!("integer of {n} bytes at byte {at}"));
                }
                let b = take(&mut pos, n)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Rc::new(Value::Int(v)));
            }
            b'G' => stack.push(Rc::new(Value::Float(f64::from_be_bytes(take(&mut pos, 8)?.try_into().expect("8"))))),
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Rc::new(storage(&pid).ok_or_else(|| format!("unknown persistent id at byte {at}"))?));
            }
            0x81 => {
                let _args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let Value::Global(class) = cls.as_ref() else {
                    return Err(format!("NEWOBJ of a non-class at byte {at}"));
                };
                stack.push(Rc::new(Value::Object { class: class.clone(), state: None }));
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                let Value::Global(name) = f.as_ref() else {
                    return Err(format!("REDUCE of a non-function at byte {at}"));
                };
                let v = match name.as_str() {
                    "torch._utils._rebuild_tensor_v2" => {
                        Value::Tensor(tensor(&args).ok_or_else(|| format!("bad tensor at byte {at}"))?)
                    }
                    "collections.OrderedDict" => Value::Dict(Vec::new()),
                    // TorchScript's typed lists: `build_intlist([..])` and its siblings.
                    n if n.starts_with("torch.jit._pickle.build_") => match args.as_ref() {
                        Value::Tuple(t) if t.len() == 1 => match t[0].as_ref() {
                            Value::List(items) => Value::List(items.clone()),
                            _ => return Err(format!("{n} of a non-list at byte {at}")),
                        },
                        _ => return Err(format!("{n} without one argument at byte {at}")),
                    },
                    _ => Value::Reduced(name.clone()),
                };
                stack.push(Rc::new(v));
            }
            b'b' => {
                let state = pop(&mut stack)?;
                let obj = pop(&mut stack)?;
                let Value::Object { class, .. } = obj.as_ref() else {
                    return Err(format!("BUILD of a non-object at byte {at}"));
                };
                stack.push(Rc::new(Value::Object { class: class.clone(), state: Some(state) }));
            }
            b'u' | b's' => {
                let items = if op == b'u' {
                    pop_mark(&mut stack, &mut marks)?
                } else {
                    if stack.len() < 2 {
                        return Err(format!("stack underflow at byte {at}"));
                    }
                    stack.split_off(stack.len() - 2)
                };
                if items.len() % 2 != 0 {
                    return Err(format!("odd SETITEMS at byte {at}"));
                }
                let d = pop(&mut stack)?;
                let Value::Dict(old) = d.as_ref() else {
                    return Err(format!("SETITEMS on a non-dict at byte {at}"));
                };
                let mut new: Vec<_> = old.clone();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    new.push((k, v));
                }
                stack.push(Rc::new(Value::Dict(new)));
            }
            b'e' | b'a' => {
                let items = if op == b'e' { pop_mark(&mut stack, &mut marks)? } else { vec![pop(&mut stack)?] };
                let l = pop(&mut stack)?;
                let Value::List(old) = l.as_ref() else {
                    return Err(format!("APPENDS on a non-list at byte {at}"));
                };
                let mut new = old.clone();
                new.extend(items);
                stack.push(Rc::new(Value::List(new)));
            }
            _ => return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
        }
    }
}

/// `('storage', dtype class, key, location, numel)`.
fn storage(pid: &Value) -> Option<Value> {
    let Value::Tuple(t) = pid else { return None };
    match (t.first()?.as_ref(), t.get(1)?.as_ref(), t.get(2)?.as_ref(), t.get(4)?.as_ref()) {
        (Value::Str(tag), Value::Global(dtype), Value::Str(key), Value::Int(n)) if tag == "storage" && *n >= 0 => {
            Some(Value::Storage { dtype: dtype.clone(), key: key.clone(), numel: *n as usize })
        }
        _ => None,
    }
}

/// `(storage, offset, size, stride, requires_grad, hooks)`.
fn tensor(args: &Value) -> Option<TensorRef> {
    let Value::Tuple(t) = args else { return None };
    let Value::Storage { dtype, key, numel } = t.first()?.as_ref() else { return None };
    let dims =
        |v: &Value| -> Option<Vec<usize>> { v.as_ints()?.into_iter().map(|i| usize::try_from(i).ok()).collect() };
    Some(TensorRef {
        dtype: dtype.clone(),
        key: key.clone(),
        numel: *numel,
        offset: usize::try_from(t.get(1)?.as_int()?).ok()?,
        shape: dims(t.get(2)?)?,
        stride: dims(t.get(3)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_objects_tensors_and_refuses_garbage() {
        // WrapNet-like: NEWOBJ + BUILD with a tensor attribute and an int list.
        let mut p = vec![0x80, 2];
        p.extend(b"c__torch__.m\nLayer\n)\x81}(");
        p.extend(b"X\x06\x00\x00\x00weight");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x003X\x03\x00\x00\x00cpuK\x06tQK\x00(K\x02K\x03t(K\x03K\x01t\x89ccollections\nOrderedDict\n)RtR");
        p.extend(b"X\x07\x00\x00\x00padding(K\x01K\x02tub.");
        let v = parse(&p).unwrap();
        assert_eq!(v.class(), Some("__torch__.m.Layer"));
        let Value::Tensor(t) = v.attr("weight").unwrap().as_ref() else { panic!("no tensor") };
        assert_eq!((t.key.as_str(), t.numel, t.shape.clone(), t.stride.clone()), ("3", 6, vec![2, 3], vec![3, 1]));
        assert_eq!(v.attr("padding").unwrap().as_ints(), Some(vec![1, 2]));
        for cut in 0..p.len() - 1 {
            assert!(parse(&p[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(parse(b"\x80\x02Z.").unwrap_err().contains("opcode 0x5a"));
        assert!(parse(b"t.").is_err());
    }
}
